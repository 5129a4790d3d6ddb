"""The HTTP API (FastAPI): ``learnpulse.api.app.create_app`` builds it, ``learnpulse.api.server.serve`` runs it.

Deliberately imports nothing, so ``learnpulse.client`` can use ``learnpulse.api.schemas`` without loading the
server (FastAPI, SQLAlchemy, prometheus_client).
"""
