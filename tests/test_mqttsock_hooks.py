"""edge_agent/mqttsock.py: paho's private parts it relies on are still there (this fails first when a paho
release changes them: pyproject.toml holds paho below 3), and its buffered socket on a real socket pair."""

from __future__ import annotations

import contextlib
import inspect
import random
import select
import socket
import threading
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.harness import wait_until
from edge_agent.broker import connect, make_client
from edge_agent.config import MqttSettings
from edge_agent.mqttsock import READ_SIZE, WRITE_SIZE, BufferedClient, BufferedSocket, UnwokenClient

# --------------------------------------------------------------------------- paho's private hooks


def _params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def _source(func: object) -> str:
    return inspect.getsource(func)  # type: ignore[arg-type]


def test_paho_makes_its_socket_with_create_socket_on_every_connect() -> None:
    """BufferedClient wraps what ``Client._create_socket()`` returns; paho must call it (without
    arguments) when it connects, and keep the result in ``Client._sock``."""
    assert _params(mqtt.Client._create_socket) == ["self"]
    connect_src = _source(mqtt.Client.reconnect)
    assert "self._sock = self._create_socket()" in connect_src
    assert "self._sock.setblocking(False)" in connect_src  # (passed through to the real socket)


def test_paho_reads_and_writes_only_through_recv_send_and_asks_pending() -> None:
    """BufferedSocket serves ``recv``/``send`` and tells paho's loop of buffered bytes with ``pending()``."""
    assert "self._sock.recv(" in _source(mqtt.Client._sock_recv)
    assert "self._sock.send(" in _source(mqtt.Client._sock_send)
    assert "pending" in _source(mqtt.Client._loop)  # buffered bytes are read without waiting in select()
    assert ".close()" in _source(mqtt.Client._sock_close)  # close() flushes the DISCONNECT first


def test_want_write_is_public_and_consulted_by_the_loop() -> None:
    """BufferedClient.want_write() adds the socket's unsent bytes to paho's own answer."""
    assert _params(mqtt.Client.want_write) == ["self"]
    assert "self.want_write()" in _source(mqtt.Client._loop)


def test_packet_queue_wakes_the_loop_through_sockpair_w() -> None:
    """UnwokenClient hides ``_sockpairW`` while ``_packet_queue`` runs: paho must write its wake-up
    byte there and nowhere else, and the method must keep its arguments."""
    assert _params(mqtt.Client._packet_queue) == ["self", "command", "packet", "mid", "qos", "info"]
    src = _source(mqtt.Client._packet_queue)
    assert "self._sockpairW" in src and "self._sockpairR" not in src
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    for name in ("_sock", "_sockpairW", "_sockpairR"):
        assert hasattr(client, name), name


def test_the_fast_paths_hook_where_paho_decodes_publish_and_puback() -> None:
    """BufferedClient decodes success PUBACKs and plain PUBLISHes itself: paho must still dispatch
    them to these methods, read the packet from ``_in_packet`` and report through these calls."""
    assert _params(mqtt.Client._handle_pubackcomp) == ["self", "cmd"]
    assert _params(mqtt.Client._handle_publish) == ["self"]
    assert _params(mqtt.Client._do_on_publish) == ["self", "mid", "reason_code", "properties"]
    assert _params(mqtt.Client._handle_on_message) == ["self", "message"]
    assert _params(mqtt.Client._send_puback) == ["self", "mid"]
    handle = _source(mqtt.Client._packet_handle)
    assert 'self._handle_pubackcomp("PUBACK")' in handle and "self._handle_publish()" in handle
    puback = _source(mqtt.Client._handle_pubackcomp)
    assert "self._out_message_mutex" in puback and "self._out_messages" in puback and "_do_on_publish(" in puback
    publish = _source(mqtt.Client._handle_publish)
    assert 'self._in_packet["packet"]' in publish and "self._manual_ack" in publish
    assert "self._handle_on_message(message)" in publish and "time_func()" in publish
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    for name in ("_in_packet", "_protocol", "_manual_ack", "_out_message_mutex", "_out_messages"):
        assert hasattr(client, name), name


def _props_of(msg: mqtt.MQTTMessage) -> object:
    props = msg.properties
    return None if props is None else props.json()


def _publish_packet(rng: random.Random, v5: bool) -> tuple[int, bytearray]:
    """A random PUBLISH (QoS 0-2, flags, topic, payload, MQTT 5 properties or none)."""
    qos = rng.choice([0, 1, 1, 2])
    header = 0x30 | (rng.random() < 0.2) << 3 | qos << 1 | (rng.random() < 0.2)
    topic = rng.choice(["a", "edge/porch/cmd/gpio.set", "t/" + "x" * rng.randrange(0, 300), "ünï/cödé"]).encode()
    body = bytearray(len(topic).to_bytes(2, "big") + topic)
    if qos:
        body += rng.randrange(1, 65536).to_bytes(2, "big")
    if v5:
        props = Properties(PacketTypes.PUBLISH)
        if rng.random() < 0.4:
            props.ResponseTopic = "r/" + str(rng.randrange(1000))
        if rng.random() < 0.4:
            props.CorrelationData = rng.randbytes(rng.randrange(1, 20))
        body += props.pack()
    body += rng.randbytes(rng.choice([0, 1, 50, 3000]))
    return header, body


@pytest.mark.parametrize("v5", [True, False])
def test_the_publish_fast_path_gives_what_paho_gives(v5: bool) -> None:
    """For random PUBLISH packets (the fast path's and the ones it leaves to paho), the message
    that reaches on_message is the one paho's own decoding makes; QoS 1 with automatic acks
    sends the same PUBACK."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    for manual in (True, False):
        fast = 0
        ours = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol, manual_ack=manual)
        paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol, manual_ack=manual)
        for _ in range(300):
            header, body = _publish_packet(rng, v5)
            got: list[tuple[mqtt.Client, mqtt.MQTTMessage, list[tuple[object, ...]]]] = []
            for client in (ours, paho):
                heard: list[mqtt.MQTTMessage] = []
                acks: list[tuple[object, ...]] = []
                client.on_message = lambda c, u, msg, heard=heard: heard.append(msg)
                client._send_puback = lambda mid, acks=acks: acks.append(("puback", mid)) or 0  # type: ignore[method-assign]
                client._send_pubrec = lambda mid, acks=acks: acks.append(("pubrec", mid)) or 0  # type: ignore[method-assign]
                client._in_packet = {"command": header, "packet": bytearray(body)}
                assert client._handle_publish() == mqtt.MQTT_ERR_SUCCESS
                if (header >> 1) & 3 == 2:  # paho holds QoS 2 until PUBREL: both went to paho
                    assert not heard
                    got.append((client, mqtt.MQTTMessage(), acks))
                    continue
                assert len(heard) == 1
                got.append((client, heard[0], acks))
            (_, a, acks_a), (_, b, acks_b) = got
            fields = ("mid", "topic", "payload", "qos", "dup", "retain")
            assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields], (header, bytes(body[:40]))
            assert _props_of(a) == _props_of(b)
            assert acks_a == acks_b
            if v5 and a.properties is ours._publish_props:
                fast += 1
        assert fast > 50 if v5 else True  # (the fast path was taken, not only paho's)


@pytest.mark.parametrize("packet, reason", [
    (b"\x12\x34", "Success"),  # MQTT 3.1.1, and MQTT 5's short form
    (b"\x12\x34\x00", "Success"),
    (b"\x12\x34\x00\x00", "Success"),
    (b"\x12\x34\x10", "No matching subscribers"),  # (a reply nobody listens to)
    (b"\x12\x34\x10\x00", "No matching subscribers"),
    (b"\x12\x34\x87", "Not authorized"),  # a failure: paho's own code
    (b"\x12\x34\x87\x00", "Not authorized"),
    (b"\x12\x34\x00\x03\x1f\x00\x00", "Success"),  # a properties block (an empty reason string)
])
def test_the_puback_fast_path_reports_what_paho_reports(packet: bytes, reason: str) -> None:
    """on_publish gets the same mid, reason and properties from the fast path as from paho, and a
    PUBACK for a message not in flight calls nothing."""
    seen: dict[str, list[tuple[int, str, bool, object]]] = {}
    fast: list[bool] = []
    for name, cls in (("ours", BufferedClient), ("paho", mqtt.Client)):
        client = cls(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        calls: list[tuple[int, str, bool, object]] = seen.setdefault(name, [])
        client.on_publish = lambda c, u, mid, rc, props, calls=calls: calls.append(
            (mid, str(rc), rc.is_failure, props.json()))
        if name == "ours":
            client.on_publish = lambda c, u, mid, rc, props, calls=calls, client=client: calls.append(
                (mid, str(rc), rc.is_failure, props.json())) or fast.append(props is client._puback_props)
        client.max_inflight_messages_set(0)
        info = None
        while info is None or info.mid != 0x1234:  # (not connected: kept in flight for later)
            info = client.publish("t", b"x", qos=1)
        for _ in range(2):  # the second time it is no longer in flight
            client._in_packet = {"command": 0x40, "packet": bytearray(packet)}
            assert client._handle_pubackcomp("PUBACK") == mqtt.MQTT_ERR_SUCCESS
        assert 0x1234 not in client._out_messages  # handed over: no longer in flight
    assert seen["ours"] == seen["paho"]
    assert [(mid, rc) for mid, rc, _, _ in seen["ours"]] == [(0x1234, reason)]
    # the fast path took exactly the reasons below 0x80 without properties
    assert fast == [len(packet) <= 4 and packet[2:3] < b"\x80"]


# --------------------------------------------------------------------------- BufferedSocket on a socket pair


@pytest.fixture
def pair() -> Iterator[tuple[BufferedSocket, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    try:
        yield BufferedSocket(ours), peer
    finally:
        ours.close()
        peer.close()


def test_small_reads_are_served_from_one_big_read(pair: tuple[BufferedSocket, socket.socket]) -> None:
    """paho reads a packet in two or three small calls: the kernel is asked once, the rest comes from
    the buffer, and ``pending()`` says how much waits there."""
    sock, peer = pair
    with pytest.raises(BlockingIOError):
        sock.recv(1)  # nothing there yet: paho's "try later"
    peer.sendall(b"\x30\x05hello" + b"\xd0\x00")
    _readable(sock)
    assert sock.recv(1) == b"\x30" and sock.pending() == 8
    assert sock.recv(1) == b"\x05" and sock.recv(5) == b"hello"
    assert sock.recv(2) == b"\xd0\x00" and sock.pending() == 0
    peer.close()
    wait_until(lambda: _eof(sock), 5)  # b"" at EOF, as a socket says it


def _readable(sock: BufferedSocket) -> None:
    """Until the kernel holds bytes for ``sock`` (select() on it, as paho's loop does)."""
    readable, _, _ = select.select([sock], [], [], 5)
    assert readable, "nothing arrived"


def _eof(sock: BufferedSocket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False


def test_a_read_that_fits_is_handed_over_whole(pair: tuple[BufferedSocket, socket.socket]) -> None:
    sock, peer = pair
    peer.sendall(b"abc")
    _readable(sock)
    assert sock.recv(10) == b"abc" and sock.pending() == 0


def test_writes_wait_for_flush_and_go_out_in_order(pair: tuple[BufferedSocket, socket.socket]) -> None:
    """``send()`` takes everything at once; nothing leaves before ``flush()`` (or 64 KiB piled up)."""
    sock, peer = pair
    assert sock.send(b"one,") == 4 and sock.send(memoryview(b"two,")) == 4 and sock.send(bytearray(b"three")) == 5
    assert sock.unsent == 13
    peer.settimeout(0.05)
    with pytest.raises(TimeoutError):
        peer.recv(100)
    sock.flush()
    assert sock.unsent == 0
    peer.settimeout(5)
    assert _recv_exactly(peer, 13) == b"one,two,three"
    sock.send(b"x" * WRITE_SIZE)  # the bound: sent at once
    assert sock.unsent == 0 and len(_recv_exactly(peer, WRITE_SIZE)) == WRITE_SIZE


def _recv_exactly(peer: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = peer.recv(n - len(out))
        assert chunk, "the peer saw EOF"
        out += chunk
    return out


def test_a_full_kernel_buffer_keeps_the_rest_for_the_next_pass(pair: tuple[BufferedSocket, socket.socket]) -> None:
    """What the kernel cannot take stays in ours (``want_write`` stays true through ``unsent``) and goes
    with a later flush, in order."""
    sock, peer = pair
    data = bytes(range(256)) * (16 * READ_SIZE // 256)  # 1 MiB: more than a socket pair's buffers
    for i in range(0, len(data), WRITE_SIZE // 2):
        sock.send(data[i:i + WRITE_SIZE // 2])
    sock.flush()
    assert sock.unsent > 0  # the kernel took what it could; no error, no loss
    got = bytearray()
    reader_done = threading.Event()

    def read() -> None:
        while len(got) < len(data):
            got.extend(peer.recv(65536))
        reader_done.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    wait_until(lambda: (sock.flush(), sock.unsent == 0)[1], 10)
    assert reader_done.wait(10) and bytes(got) == data


def test_a_broken_connection_is_reported_by_the_next_read_or_write(pair: tuple[BufferedSocket, socket.socket]) -> None:
    """A write that fails is kept as the socket's error: paho hears of it at its next ``send``, or its next
    ``recv`` once what was already read is consumed (a last PUBACK is not lost)."""
    sock, peer = pair
    peer.sendall(b"abc")
    _readable(sock)
    assert sock.recv(1) == b"a"  # "bc" wait in the buffer
    peer.close()
    for _ in range(100):  # the first writes may still be taken by the kernel
        sock.send(b"x" * 1024)
        sock.flush()
        if sock._error is not None:
            break
    assert isinstance(sock._error, OSError)
    assert sock.recv(2) == b"bc"
    with pytest.raises(OSError):
        sock.recv(1)
    with pytest.raises(OSError):
        sock.send(b"y")


def test_close_sends_what_is_buffered_first(pair: tuple[BufferedSocket, socket.socket]) -> None:
    """paho closes right after writing DISCONNECT: it must leave, or the broker takes a clean stop for a
    lost connection (and publishes the last will)."""
    sock, peer = pair
    sock.send(b"\xe0\x00")  # DISCONNECT
    sock.close()
    assert _recv_exactly(peer, 2) == b"\xe0\x00" and peer.recv(1) == b""


# --------------------------------------------------------------------------- BufferedClient on a real broker


@pytest.mark.parametrize("cls", [BufferedClient, UnwokenClient])
def test_a_buffered_client_publishes_and_hears_through_a_real_broker(broker, cls: type[BufferedClient]) -> None:
    """Made by the factory, a client sits on a BufferedSocket; its loop with a flush after each pass
    connects, subscribes, publishes QoS 1 and hears its own message."""
    client = make_client(MqttSettings(host="127.0.0.1", port=broker.port), f"hooks-{cls.__name__}", cls=cls)
    heard: list[bytes] = []
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("hooks/#", qos=1)
    client.on_message = lambda c, u, msg: heard.append(msg.payload)
    connect(client, MqttSettings(host="127.0.0.1", port=broker.port), keepalive=30)
    assert isinstance(client.socket(), BufferedSocket)

    def loop() -> bool:
        client.loop(timeout=0.05)
        client.flush()
        return bool(heard)

    wait_until(lambda: (loop(), client.is_connected())[1], 10)
    info = client.publish("hooks/t", b"through the buffer", qos=1)
    assert client.want_write()  # queued, not written by this thread: the loop writes it
    wait_until(lambda: loop() and info.is_published(), 10)
    assert heard == [b"through the buffer"]
    client.disconnect()
    client.loop(timeout=0.05)
    client.flush()


# --------------------------------------------------------------------------- wake-up bytes


def _wake_bytes(client: BufferedClient) -> int:
    """How many wake-up bytes wait in the client's socket pair (read and counted)."""
    pair = client._sockpairR
    assert pair is not None
    got = 0
    while select.select([pair], [], [], 0)[0]:
        got += len(pair.recv(4096))
    return got


def test_the_loop_thread_queues_without_waking_itself_and_other_threads_wake_it(broker) -> None:
    """A packet queued by the thread that runs loop() (the link's acks) writes no wake-up byte; one
    queued by another thread does, one per packet, and inside publishing() one for all of them.
    Compared with paho's own client, which writes one per packet whoever queues it."""
    cfg = MqttSettings(host="127.0.0.1", port=broker.port)
    counts = {}
    for cls in (mqtt.Client, BufferedClient):
        client = cls(mqtt.CallbackAPIVersion.VERSION2, client_id=f"wake-{cls.__name__}", protocol=mqtt.MQTTv5,
                     manual_ack=True)
        client.on_socket_register_write = lambda c, u, sock: None  # (as make_client: only the loop writes)
        connect(client, cfg, keepalive=30)
        def step(c: mqtt.Client = client) -> bool:
            c.loop(timeout=0.05)
            getattr(c, "flush", lambda: None)()  # (a BufferedClient's owner flushes after each pass)
            return c.is_connected()

        wait_until(step, 10)
        _wake_bytes(client)
        for mid in range(1, 6):
            client.ack(mid, 1)
        got = [_wake_bytes(client)]

        def other(batched: bool, client: mqtt.Client = client) -> None:
            with client.publishing() if batched else contextlib.nullcontext():  # type: ignore[attr-defined]
                for _ in range(7):
                    client.publish("wake/t", b"x", qos=1)

        for batched in (False, True) if cls is BufferedClient else (False,):
            t = threading.Thread(target=other, args=(batched,))
            t.start()
            t.join()
            got.append(_wake_bytes(client))
        counts[cls.__name__] = got
        assert client._sockpairW is not None  # (hidden only while the loop's thread queues)
        client.disconnect()
        client.loop(timeout=0.05)
    assert counts == {"Client": [5, 7], "BufferedClient": [0, 7, 1]}
