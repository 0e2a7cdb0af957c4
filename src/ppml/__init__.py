"""ppml: privacy-preserving big-data analytics.

Data stays encrypted at rest under data keys that a key management service wraps; jobs decrypt it only
inside the process that needs it and write their results encrypted.
"""

__version__ = "0.1.0"
