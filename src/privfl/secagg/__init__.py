"""Secure aggregation: the server learns the sum of the clients' updates and nothing else.

Implements SecAgg (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS) and SecAgg+ (Bell et al. 2020, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS): every client adds to
its fixed-point encoded update pairwise masks that cancel in the sum and a self-mask,
and Shamir-shares the secrets behind them among its neighbours so that the server can
finish the round when clients drop out. SecAgg uses the complete graph; SecAgg+ a random
sparse graph of degree O(log n), which cuts a client's work from O(n) to O(log n) masks.

Threat model: a server that may deviate from the protocol and collude with up to the
stated fraction of clients, given a PKI that binds each client id to its signing key
(:mod:`.signing`); the protocol stays correct when up to the stated fraction of
clients drop out at any point. The consistency check of Bonawitz et al.'s actively
secure protocol makes every honest client that reveals shares see the same survivor
set, so none reveals both shares of one client; see the explanation page for what
remains (a malicious server can still drop honest clients down to the quorum).

Modules: :mod:`.encoding` (fixed point in Z_2^32 / Z_2^64, and narrower rings Z_2^k
for integer codes, packed at k bits), :mod:`.quantization` (stochastic rounding onto a
grid shared by a round's clients, whose codes add up), :mod:`.shamir` (secret
sharing), :mod:`.primitives` (X25519, HKDF, ChaCha20-Poly1305, GMAC, AES-CTR PRG from
``cryptography``), :mod:`.signing` (Ed25519 statements, the key directory),
:mod:`.graph` and :mod:`.parameters` (neighbours, k and t), :mod:`.config`,
:mod:`.messages` (byte format), :mod:`.client`, :mod:`.server` and :mod:`.simulation`
(a whole round in one process, with dropouts).
"""

from privfl.secagg.client import SecAggClient
from privfl.secagg.config import SecAggConfig, secagg_config
from privfl.secagg.encoding import (
    clamp_bound,
    decode,
    encode,
    encoded_bound,
    required_bits,
    ring_bits_for,
    ring_dtype,
)
from privfl.secagg.graph import complete_graph, harary_graph
from privfl.secagg.messages import ProtocolError
from privfl.secagg.parameters import secagg_plus_parameters, secagg_threshold
from privfl.secagg.server import PHASES, SecAggAborted, SecAggServer
from privfl.secagg.signing import KeyDirectory, trusted_setup
from privfl.secagg.simulation import DropoutPlan, SecureSumOutcome, secure_sum

__all__ = [
    "PHASES",
    "DropoutPlan",
    "KeyDirectory",
    "ProtocolError",
    "SecAggAborted",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "SecureSumOutcome",
    "clamp_bound",
    "complete_graph",
    "decode",
    "encode",
    "encoded_bound",
    "harary_graph",
    "required_bits",
    "ring_bits_for",
    "ring_dtype",
    "secagg_config",
    "secagg_plus_parameters",
    "secagg_threshold",
    "secure_sum",
    "trusted_setup",
]
