"""PySpark on encrypted data: the ``ppml`` data source and :class:`PPMLContext`."""

from ppml.spark.context import PPMLContext, register, secure_session
from ppml.spark.datasource import PpmlDataSource

__all__ = ["PPMLContext", "PpmlDataSource", "register", "secure_session"]
