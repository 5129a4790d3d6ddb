"""The API's routers: health and metrics (open), KPIs and job runs (bearer token)."""
