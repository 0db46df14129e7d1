"""Interrupt: a block of a task that a callback ends with an exception, as a task group's
failing task cancels the others, and cancellation from outside still wins."""

from __future__ import annotations

import asyncio

import pytest

from twilio_dg_proxy.interrupts import Interrupt


class Failed(Exception):
    pass


async def test_a_callback_ends_the_blocks_wait_with_its_error_after_the_block_unwinds() -> None:
    interrupt, unwound = Interrupt(), []
    loop = asyncio.get_running_loop()
    loop.call_soon(interrupt.fail, Failed("side"))
    with pytest.raises(Failed, match="side"):
        with interrupt:
            try:
                await loop.create_future()  # never done: only the interrupt ends it
            finally:
                unwound.append(True)
    assert unwound == [True]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # its cancel() taken back
    await asyncio.sleep(0)  # and not delivered later


async def test_an_error_given_before_the_block_is_raised_as_it_begins() -> None:
    interrupt, ran = Interrupt(), []
    interrupt.fail(Failed("early"))
    with pytest.raises(Failed, match="early"):
        with interrupt:
            ran.append(True)
    assert ran == []


async def test_an_error_given_after_the_block_is_ignored() -> None:
    interrupt = Interrupt()
    with interrupt:
        await asyncio.sleep(0)
    interrupt.fail(Failed("late"))
    assert interrupt.error is None
    await asyncio.sleep(0)  # nothing cancelled


async def test_the_first_error_wins() -> None:
    interrupt = Interrupt()
    loop = asyncio.get_running_loop()
    loop.call_soon(interrupt.fail, Failed("first"))
    loop.call_soon(interrupt.fail, Failed("second"))
    with pytest.raises(Failed, match="first"):
        with interrupt:
            await loop.create_future()


async def test_its_own_error_wins_over_what_the_block_raises_while_unwinding() -> None:
    """As a task group raises the failed task's error even if a cancelled one raised too."""
    interrupt = Interrupt()
    asyncio.get_running_loop().call_soon(interrupt.fail, Failed("side"))
    with pytest.raises(Failed, match="side") as raised:
        with interrupt:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                raise ValueError("while unwinding") from None
    assert isinstance(raised.value.__context__, ValueError)


async def test_a_block_that_swallows_the_cancellation_still_raises_the_error() -> None:
    interrupt = Interrupt()
    asyncio.get_running_loop().call_soon(interrupt.fail, Failed("side"))
    with pytest.raises(Failed):
        with interrupt:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_the_blocks_own_code_failing_it_ends_it_at_its_next_wait() -> None:
    interrupt = Interrupt()
    with pytest.raises(Failed):
        with interrupt:
            interrupt.fail(Failed("own"))
            await asyncio.get_running_loop().create_future()


async def test_the_blocks_own_code_failing_it_as_it_ends_raises_at_once() -> None:
    interrupt = Interrupt()
    with pytest.raises(Failed):
        with interrupt:
            interrupt.fail(Failed("own"))
    await asyncio.sleep(0)  # the cancel it had scheduled is not delivered


async def in_block(interrupt: Interrupt, entered: asyncio.Event) -> None:
    with interrupt:
        entered.set()
        await asyncio.sleep(10)


async def test_a_cancellation_from_outside_propagates() -> None:
    interrupt, entered = Interrupt(), asyncio.Event()
    task = asyncio.create_task(in_block(interrupt, entered))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_from_outside_wins_over_the_error() -> None:
    """As with a task group: the task was cancelled, so it ends cancelled."""
    interrupt, entered = Interrupt(), asyncio.Event()
    task = asyncio.create_task(in_block(interrupt, entered))
    await entered.wait()
    interrupt.fail(Failed("side"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nested_blocks_each_raise_their_own_error() -> None:
    outer, inner = Interrupt(), Interrupt()
    loop = asyncio.get_running_loop()
    loop.call_soon(inner.fail, Failed("inner"))
    with pytest.raises(Failed, match="outer"):
        with outer:
            with pytest.raises(Failed, match="inner"):
                with inner:
                    await loop.create_future()
            loop.call_soon(outer.fail, Failed("outer"))
            with Interrupt():  # not failed: the outer block's cancellation goes through it
                await loop.create_future()


async def test_an_outer_error_given_while_an_inner_one_unwinds_wins() -> None:
    outer, inner = Interrupt(), Interrupt()
    loop = asyncio.get_running_loop()
    loop.call_soon(inner.fail, Failed("inner"))
    with pytest.raises(Failed, match="outer"):
        with outer:
            with inner:
                try:
                    await loop.create_future()
                finally:
                    outer.fail(Failed("outer"))  # from the task itself: at its next wait
                    await asyncio.sleep(0)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
