#!/usr/bin/env bash
# Every command of two-owners-two-nodes.md, run on one machine over loopback, in the
# current folder (privfl-flower's tests run it so). On real machines, each part runs
# where its comment says, with LINK the SuperLink's address as the others reach it.
# Needs privfl and privfl-flower installed, openssl and ssh-keygen.
set -euo pipefail
APP=$(cd "$(dirname "$0")/two_owners_app" && pwd)
LINK=127.0.0.1
ROUNDS=${ROUNDS:-3}                 # training rounds (the tests run 1)
PORT=${PORT:-9093}                  # the SuperLink's
ALICE_PORT=${ALICE_PORT:-9094}      # each SuperNode's local runtime API
BOB_PORT=${BOB_PORT:-9095}
EVAL_PORT=${EVAL_PORT:-29500}       # where the model owner meets the other parties
export FLWR_HOME=$PWD/flwr-home     # the operator's Flower CLI configuration
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT    # stop the servers started below

wait_for() {  # FILE TEXT: wait until a server's log says TEXT
    for _ in $(seq 120); do grep -q "$2" "$1" 2>/dev/null && return; sleep 1; done
    echo "$1 never said $2" >&2; cat "$1" >&2; return 1
}

# [start-data]
# On Alice's machine:
python "$APP/owner_data.py" alice 0 alice-data
# On Bob's machine:
python "$APP/owner_data.py" bob 1 bob-data
# [end-data]

# [start-certificates]
# The operator, on the SuperLink's machine: a CA, and the SuperLink's certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes \
    -keyout ca.key -out ca.crt -days 365 -subj "/CN=Alice and Bob's federation CA"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes \
    -keyout superlink.key -out superlink.csr -subj "/CN=$LINK"
openssl x509 -req -in superlink.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out superlink.crt -days 365 -extfile <(echo "subjectAltName=IP:$LINK")
# Alice and Bob, each on its machine: a node key pair (they send the .pub file).
ssh-keygen -q -t ecdsa -b 384 -N "" -f alice.key
ssh-keygen -q -t ecdsa -b 384 -N "" -f bob.key
# [end-certificates]

# [start-superlink]
# The operator: start the SuperLink, point the flwr CLI at it, register both keys.
flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile superlink.crt \
    --ssl-keyfile superlink.key --enable-supernode-auth \
    --disable-runtime-dependency-installation --host "$LINK" --port "$PORT" \
    --database superlink.db > superlink.log 2>&1 &
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "two-owners"

[superlink.two-owners]
address = "$LINK:$PORT"
root-certificates = "$PWD/ca.crt"
TOML
wait_for superlink.log "Uvicorn running"
flwr supernode register alice.key.pub two-owners
flwr supernode register bob.key.pub two-owners
# [end-superlink]

# [start-nodes]
# Alice, on her machine (the operator gave her ca.crt):
flower-supernode --superlink "$LINK:$PORT" --root-certificates ca.crt \
    --auth-supernode-private-key alice.key --port "$ALICE_PORT" \
    --node-config "data-dir=\"$PWD/alice-data\"" > alice-node.log 2>&1 &
# Bob, on his:
flower-supernode --superlink "$LINK:$PORT" --root-certificates ca.crt \
    --auth-supernode-private-key bob.key --port "$BOB_PORT" \
    --node-config "data-dir=\"$PWD/bob-data\"" > bob-node.log 2>&1 &
# [end-nodes]

# [start-train]
# The operator: train with DP and SecAgg+; the model and its history land in ./run.
flwr run "$APP" two-owners --stream --run-config "num-rounds=$ROUNDS run-dir=\"$PWD/run\""
# [end-train]

# [start-evaluate]
# Each owner's test digits, evaluated under SMPC: the operator is the model owner, a
# third party the dealer, the owner the data owner, who alone gets the predictions.
for owner in alice bob; do
    privfl evaluate-party --role model-owner --address "$LINK:$EVAL_PORT" \
        --run-dir run --quiet &                                     # the operator
    model_owner=$!
    privfl evaluate-party --role dealer --address "$LINK:$EVAL_PORT" --quiet &  # the dealer
    dealer=$!
    privfl evaluate-party --role data-owner --address "$LINK:$EVAL_PORT" \
        --data-dir "$owner-data/mnist" --output "$owner-predictions.json"  # the owner
    wait "$model_owner"
    wait "$dealer"
    EVAL_PORT=$((EVAL_PORT + 1))
done
# [end-evaluate]
