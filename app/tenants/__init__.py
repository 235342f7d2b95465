"""Tenants: the organisations one Switchboard serves, their members, quotas, usage and erasure.

``directory`` finds tenants and a user's memberships; ``erasure`` is the job that deletes a
tenant's every row; ``resources`` serves ``/tenants`` (operators), ``/usage`` and ``/members``.
Isolation itself lives where the data does: ``TenantOwned`` in ``app/store/models.py`` is the
one scoped query path, and ``app/auth/access.py`` decides which tenant a request acts in.
"""
