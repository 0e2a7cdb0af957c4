"""PySpark on encrypted data: the ``ppml`` data source and :class:`PPMLContext`."""

from ppml.spark.context import PPMLContext, register
from ppml.spark.datasource import PpmlDataSource
from ppml.spark.session import secure_session

__all__ = ["PPMLContext", "PpmlDataSource", "register", "secure_session"]
