"""Ordered schema migrations; each module defines `upgrade(conn)`.

Number ranges keep independent components from colliding:
0001-0009 core runtime, 0010-0019 trust/orders/evidence, 0020-0029 outbox and
delivery, 0030-0039 controllers' own state.
"""
