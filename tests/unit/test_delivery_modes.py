"""The delivery-mode table (edgectl.delivery): every transport type of the manifest schema is delivered by exactly
one mode; a pushed type has a transport class, a type that is never connected to has a publisher and a report
reader that import, and a command that would connect to it says so."""

from __future__ import annotations

import typing

import pytest

from edgectl.delivery import DELIVERY_MODES, by_delivery, mode_function, mode_of_transport
from edgectl.errors import TransportError
from edgectl.spec.fleet import Transport
from edgectl.transport import TRANSPORTS, transport_class


def schema_transport_types() -> list[str]:
    union = typing.get_args(Transport)[0]
    return [typing.get_args(cls.model_fields["type"].annotation)[0] for cls in typing.get_args(union)]


def test_every_transport_type_has_one_delivery_mode_that_can_deliver_it():
    types = schema_transport_types()
    assert set(types) >= {"local", "ssh", "docker", "pull"}
    for kind in types:
        mode = mode_of_transport(kind)
        if mode.connects:
            assert kind in TRANSPORTS, kind
        else:
            assert callable(mode_function(mode.publish)) and callable(mode_function(mode.report))
            with pytest.raises(TransportError, match="never connects"):
                transport_class(kind)


def test_devices_are_grouped_by_mode_in_their_order():
    from types import SimpleNamespace

    devices = [SimpleNamespace(name=n, transport=SimpleNamespace(type=t))
               for n, t in (("a", "ssh"), ("b", "pull"), ("c", "local"), ("d", "pull"))]
    groups = by_delivery(devices)
    assert {m: [d.name for d in g] for m, g in groups.items()} == {"push": ["a", "c"], "pull": ["b", "d"]}
    assert set(DELIVERY_MODES) == {"push", "pull"}
