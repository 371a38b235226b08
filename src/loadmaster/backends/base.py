"""The backend interface: what the engine asks of whatever carries orders to nodes.

Used by the engine thread (client). A backend starts or attaches nodes, each
running one :class:`~loadmaster.node.runtime.NodeRuntime`; carries
:class:`~loadmaster.node.orders.Order` batches to a named node; delivers the
nodes' events (:class:`~loadmaster.node.orders.Done`,
:class:`~loadmaster.node.orders.HandedBack`,
:class:`~loadmaster.node.orders.Lost`, each naming its node) and its own
(:class:`~loadmaster.node.orders.NodeJoined`,
:class:`~loadmaster.node.orders.NodeLeft`) through :meth:`Backend.wait`,
which blocks until there are events, a :meth:`Backend.wake`, or the timeout.

The engine knows no file descriptor, socket or wire format: only this.

Does not cover: packing (the scheduler decides what runs where; a backend
never chooses a node), sizing, or what a node does with an order
(``node/runtime.py``).

See also: ``backends/local.py`` (one node in this process), the Dask
backend (``backends/dask*.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

from loadmaster.node.orders import Event, NodeInfo, Order


class Backend(abc.ABC):
    """Carries orders to named nodes and their events back (engine thread, except :meth:`wake`)."""

    @abc.abstractmethod
    def nodes(self) -> list[NodeInfo]:
        """The nodes that can take orders now (later changes come as events from :meth:`wait`)."""

    @abc.abstractmethod
    def submit(self, node: str, orders: Sequence[Order]) -> None:
        """Carry ``orders`` to ``node``, in order. Never blocks on the node.

        An order to a node that has left is dropped: its :class:`NodeLeft`
        event (or :class:`Lost`) tells the engine.
        """

    @abc.abstractmethod
    def cancel(self, node: str, task_id: int) -> None:
        """Ask ``node`` to stop a task (its ``Done`` says ``cancelled``)."""

    @abc.abstractmethod
    def wait(self, timeout: float | None) -> list[Event]:
        """Return the events that arrived, blocking until one does, a wake, or ``timeout`` s.

        ``timeout=None`` waits without end. Returns ``[]`` after a wake or the timeout.
        """

    @abc.abstractmethod
    def wake(self) -> None:
        """Make a :meth:`wait` in progress (or the next one) return now. Any thread."""

    def admitter(self, node: str) -> Callable[[int], bool] | None:
        """The node-wide memory admission of ``node`` where the engine may ask it directly.

        ``admit(in_use)`` is true when the node's memory ledger holds
        ``in_use`` bytes for this executor (the scheduler's ``admit``).
        ``None`` (the default): the node does its own admission.
        """
        return None

    def grows(self) -> bool:
        """Whether nodes may join without the user (an adaptive cluster).

        A task no node could hold then waits for a bigger node (the engine says
        so in its log) instead of failing. ``False`` (the default): it fails.
        """
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the nodes this backend started (after their running tasks); idempotent."""
