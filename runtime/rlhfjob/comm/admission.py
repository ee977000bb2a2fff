"""Admit connections to this process's listening sockets only from the gang's addresses.

gloo and TensorPipe listen in native code that reads whatever a connection sends
before anything of ours sees it; TensorPipe trusts a stranger's length header and
aborts the process (``std::bad_alloc``: SECURITY.md). Neither lets us refuse a
connection before it reads, so the kernel does it: :func:`guard` attaches a classic
BPF socket filter (``SO_ATTACH_FILTER``, no privilege needed) to every TCP socket
this process listens on, and the filter drops every packet whose source address is
not one the signed rendezvous published for a peer of the job. A stranger's SYN
is dropped, so its connection is never accepted and no byte of it reaches gloo or
TensorPipe: it times out, as a filtered port does. Connections accepted from a
guarded listener inherit its filter.

Edge cases, each on purpose:

- Every process publishes all its addresses, loopback included (in a pod, loopback
  is the pod's own network namespace). On one host (``rlhfjob run``) every peer
  connects from 127.0.0.1, so there the filter admits whoever connects from
  127.0.0.1: any local user. That residual risk is named in SECURITY.md; a
  stranger from another host, or from another loopback address, is dropped.
- A connection accepted before the filter went on (during ``init_rpc``, seconds) is
  not filtered; sockets that listen later (a ``dist.new_group``) are guarded by the
  next :func:`guard` call, which the executor makes after it creates its groups.
- IPv4 and IPv6 sources are both checked; an IPv4-mapped IPv6 peer address
  (``::ffff:a.b.c.d``) is admitted as its IPv4 address, which is what the kernel
  shows the filter.
- Linux only (``/proc/self/fd``, ``SO_ATTACH_FILTER``). Elsewhere :func:`guard` finds
  no listening socket and guards nothing, never failing the job.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import os
import socket
import stat
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhfjob.comm.env import Peer

__all__ = [
    "exempt",
    "filter_program",
    "guard",
    "guard_peers",
    "host_addresses",
    "local_ipv4",
]

# Classic BPF (linux/filter.h, linux/bpf_common.h).
_LD_W_ABS, _LD_B_ABS, _ALU_AND_K, _JEQ_K, _JA, _RET_K = 0x20, 0x30, 0x54, 0x15, 0x05, 0x06
_SKF_NET_OFF = -0x100000  # offsets from the network (IP) header, whatever skb->data is
_ACCEPT, _DROP = 0xFFFFFFFF, 0
_MAX_INSNS = 4096  # BPF_MAXINSNS
_SO_ATTACH_FILTER = 26

# One instruction before assembly: (code, jump if true, jump if false, k); a jump is
# the label it goes to, or None for the next instruction.
_Insn = tuple[int, "str | None", "str | None", int]


def _addresses(addresses: Iterable[str]) -> tuple[list[int], list[bytes]]:
    """IPv4 as ints and IPv6 as 16 bytes, IPv4-mapped made IPv4."""
    v4: set[int] = set()
    v6: set[bytes] = set()
    for text in addresses:
        address = ipaddress.ip_address(text)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if isinstance(address, ipaddress.IPv4Address):
            v4.add(int(address))
        else:
            v6.add(address.packed)
    return sorted(v4), sorted(v6)


def _program(v4: list[int], v6: list[bytes]) -> tuple[list[_Insn], dict[str, int]]:
    """The program with symbolic jumps, and where each label is."""
    insns: list[_Insn] = []
    labels: dict[str, int] = {}

    def at(label: str) -> None:
        labels[label] = len(insns)

    insns += [
        (_LD_B_ABS, None, None, _SKF_NET_OFF),
        (_ALU_AND_K, None, None, 0xF0),
        (_JEQ_K, None, "v6", 0x40),  # the IP version nibble
        (_LD_W_ABS, None, None, _SKF_NET_OFF + 12),  # the IPv4 source address
    ]
    for index, value in enumerate(v4):
        # Conditional jumps reach 255 instructions; "ja" (32-bit) reaches accept always.
        insns += [(_JEQ_K, None, f"v4-{index + 1}", value), (_JA, "accept", None, 0)]
        at(f"v4-{index + 1}")
    insns.append((_JA, "drop", None, 0))
    at("v6")
    for index, packed in enumerate(v6):
        miss = f"v6-{index + 1}"
        for word_index, word in enumerate(struct.unpack("!IIII", packed)):
            insns += [
                (_LD_W_ABS, None, None, _SKF_NET_OFF + 8 + 4 * word_index),
                (_JEQ_K, None, miss, word),
            ]
        insns.append((_JA, "accept", None, 0))
        at(miss)
    at("drop")
    insns.append((_RET_K, None, None, _DROP))
    at("accept")
    insns.append((_RET_K, None, None, _ACCEPT))
    return insns, labels


def filter_program(addresses: Iterable[str]) -> bytes:
    """The BPF program (``struct sock_filter[]`` bytes) that accepts packets whose source
    is one of ``addresses`` and drops every other; pure. Loopback is an address like
    any other: admitted only when listed.

    ValueError for a string that is no IP address, or for more addresses than one
    program holds (4096 instructions: about 2000 IPv4 or 450 IPv6 ones).
    """
    v4, v6 = _addresses(addresses)
    insns, labels = _program(v4, v6)
    if len(insns) > _MAX_INSNS:
        raise ValueError(
            f"{len(v4) + len(v6)} peer addresses need {len(insns)} filter instructions; "
            f"a socket filter holds {_MAX_INSNS}"
        )
    out = []
    for here, (code, jt, jf, k) in enumerate(insns):
        if code == _JA:  # the offset is k; jt names the target
            assert jt is not None
            out.append(struct.pack("HBBI", code, 0, 0, labels[jt] - here - 1))
            continue
        true = 0 if jt is None else labels[jt] - here - 1
        false = 0 if jf is None else labels[jf] - here - 1
        assert 0 <= true <= 255 and 0 <= false <= 255, (here, true, false)
        out.append(struct.pack("HBBI", code, true, false, k & 0xFFFFFFFF))
    return b"".join(out)


def local_ipv4(fib_trie: str) -> list[str]:
    """The local IPv4 addresses in ``/proc/net/fib_trie``'s text (secondary ones too):
    each ``|-- a.b.c.d`` line followed by a ``/32 host LOCAL`` line; pure."""
    found = []
    lines = fib_trie.splitlines()
    for line, after in itertools.pairwise(lines):
        if line.strip().startswith("|--") and after.split()[:3] == ["/32", "host", "LOCAL"]:
            found.append(line.split()[-1])
    return list(dict.fromkeys(found))


def host_addresses() -> tuple[str, ...]:
    """This host's (pod's) IP addresses, loopback included: IPv4 from
    ``/proc/net/fib_trie``, IPv6 from ``/proc/net/if_inet6``. A table that cannot be
    read adds nothing (the caller publishes what it found)."""
    found: list[str] = []
    try:
        with open("/proc/net/fib_trie") as table:
            found += local_ipv4(table.read())
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as table:
            for line in table:
                found.append(str(ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))))
    except OSError:
        pass
    return tuple(dict.fromkeys(found))


_exempt: set[int] = set()  # socket inodes never guarded


def exempt(fd: int) -> None:
    """Never guard the listening socket ``fd``: one that serves outside the gang (the
    driver's metrics, which Prometheus scrapes from anywhere). It must stay open for the
    process's life (its inode is what is remembered)."""
    _exempt.add(os.fstat(fd).st_ino)


def guard(addresses: Iterable[str]) -> list[int]:
    """Attach the filter of ``addresses`` to every listening socket of this process but
    the exempt ones; returns their file descriptors. A second call attaches it again
    (the kernel replaces a socket's filter), and so also guards sockets that began
    listening since. A socket this cannot guard (closed meanwhile, its descriptor
    reused by another socket, or a kernel that refuses the filter) is skipped: the
    job runs, guarded by network policy alone for that socket."""
    program = filter_program(addresses)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(buffer))
    done = []
    for fd, sock in _own_listeners():
        with sock:
            try:
                if os.fstat(sock.fileno()).st_ino in _exempt:
                    continue
                sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            except OSError:
                continue
        done.append(fd)
    return done


def _own_listeners() -> list[tuple[int, socket.socket]]:
    """This process's listening TCP sockets: (file descriptor, a socket object on a
    duplicate of it, for the caller to close). Each descriptor is asked itself
    (``SO_ACCEPTCONN``), so none is missed the way a ``/proc/net/tcp`` row can be; one
    closed since the listing, or reused by something that is not a TCP listener, is
    left out."""
    found = []
    try:
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    except OSError:
        return []
    for fd in fds:
        try:
            dup = os.dup(fd)
        except OSError:
            continue  # closed since the listing
        try:
            if not stat.S_ISSOCK(os.fstat(dup).st_mode):
                os.close(dup)
                continue
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            continue
        try:
            listening = (
                sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            )
        except OSError:
            listening = False
        if listening:
            found.append((fd, sock))
        else:
            sock.close()
    return found


def guard_peers(peers: Iterable[Peer]) -> list[int]:
    """:func:`guard` with every address the peers published at the signed rendezvous.

    Guards nothing when no peer published one (a process outside a gang, or one whose
    address tables could not be read): a filter admitting nobody would cut the gang.
    """
    addresses = [address for peer in peers for address in peer.addresses]
    return guard(addresses) if addresses else []
