"""The Admin API of pipeline: FastAPI over materialized views of the runtime's topics."""

from admin_api.app import create_app

__all__ = ["create_app"]
