"""The job body (raymerge.worker) without Ray."""

from __future__ import annotations

from types import SimpleNamespace as NS

from raymerge.buffers import out_buffer


def test_output_buffer_zeroes_what_the_pieces_do_not_cover() -> None:

    piece = NS(out_start=120, out_end=140)
    buf = out_buffer(NS(part=2, out_start=100, nbytes=60, pieces=(piece,)), header_len=16)
    buf[20:40] = 7  # what the piece would write
    assert buf[:20].eq(0).all() and buf[40:].eq(0).all()
    head = out_buffer(NS(part=1, out_start=0, nbytes=48, pieces=()), header_len=16)
    assert head[16:].eq(0).all()
