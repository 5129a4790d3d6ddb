"""The store: table definitions, migrations and every function that reads or writes SQL."""
