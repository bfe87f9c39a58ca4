"""The digest of the admitted order's signed payload beside its nonce.

A re-read of an order already admitted (the control plane serves a page again
after a crash) carries the same payload: it is recognised as such instead of
being taken for a replay. A different payload reusing the nonce is still a
replay. Rows from before this migration have NULL: their order_id decides.
"""

from sqlalchemy import Connection, text


def upgrade(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE order_nonces ADD COLUMN payload_sha256 TEXT"))
