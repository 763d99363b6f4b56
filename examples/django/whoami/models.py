from django.db import models


class EchoHit(models.Model):
    """One row per request that reached GET /echo.

    A table rather than a counter in memory, so that every gunicorn
    worker adds to the same count.
    """

    at = models.DateTimeField(auto_now_add=True)
