"""The key broker: releases data keys only to callers whose attestation evidence satisfies a policy.

:mod:`~ppml.broker.service` makes the decisions, :mod:`~ppml.broker.app` serves them over HTTPS,
:mod:`~ppml.broker.audit` records every one of them. The protocol is in docs/broker.md.
"""
