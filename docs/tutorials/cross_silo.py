"""Cross-silo regression: Alice and Bob train one model on their own tables.

Run it with ``python docs/tutorials/cross_silo.py``; it needs no download (the diabetes
table ships with privfl) and finishes in a few seconds. The docs build runs it and
shows its output.
"""

# [start-imports]
import shutil
import tempfile
from pathlib import Path

import torch

import privfl
from privfl.algorithms.tabular_models import MLP
from privfl.builtin.smpc_evaluator import SMPCEvaluator
from privfl.data.diabetes import TARGET, write_owner_csvs
from privfl.tabular_owners import TabularOwnerData, csv_owners, federated_scaling

# [end-imports]

# [start-files]
folder = Path(tempfile.mkdtemp())
for path in write_owner_csvs(folder, ("alice", "bob"), seed=0):
    rows = len(path.read_text().splitlines()) - 1
    print(f"{path.name}: {rows} patients")
# [end-files]

# [start-owners]
owners = csv_owners(folder, TARGET, test_fraction=0.2, seed=0)
for owner in owners:
    count, sums, squares = owner.moments(labels=False)
    print(
        f"{Path(owner.name).name}: trains on {len(owner.train_rows)} rows, holds out "
        f"{len(owner.test_rows)}; shares {count[0]:.0f} and the column sums, "
        f"e.g. bmi {sums[2]:.1f} and bmi^2 {squares[2]:.1f}"
    )
scaling = federated_scaling(owners)
print(f"target scaled with mean {scaling.target_mean:.2f} and std {scaling.target_std:.2f}")
data = TabularOwnerData(owners, scaling)
test = data.test()
# [end-owners]


# [start-federation]
def federation(**where) -> privfl.Federation:
    """The same MLP, initialisation and schedule, trained where ``where`` says."""
    torch.manual_seed(0)
    return privfl.Federation(
        model=MLP(in_features=10, widths=[64]),
        test=test,
        training=privfl.LocalTraining(epochs=1, batch_size=10, lr=0.01),
        sampler="all",
        executor="serial",
        **where,
    )


fed = federation(client_data=data)
print(f"task {fed.task}, metrics {', '.join(fed.metrics)}")
for record in fed.run(20):
    if record.round % 5 == 0:
        m = record.metrics
        print(f"round {record.round:2d}  mse {m['mse']:.4f}  mae {m['mae']:.4f}  r2 {m['r2']:.4f}")
# [end-federation]

# [start-central]
parts = [data.load(k).examples for k in range(data.num_clients)]
pooled = privfl.TensorPair(
    torch.cat([p.inputs for p in parts]), torch.cat([p.targets for p in parts])
)
central = federation(train=pooled, partition=[torch.arange(len(pooled))])
central_mse = central.run(20)[-1].metrics["mse"]
federated_mse = fed.evaluate()["mse"]
print(f"test MSE: federated {federated_mse:.4f}, central {central_mse:.4f}")
print(f"federated / central: {federated_mse / central_mse:.3f}")
# [end-central]

# [start-smpc]
scores = SMPCEvaluator().evaluate(
    model=fed.global_model(), test=test, loss=fed.loss, metrics=fed.metrics
)
print(f"secure MSE    {scores['smpc_mse']:.6f} on {scores['smpc_examples']} held-out rows")
print(f"plaintext MSE {scores['smpc_plaintext_mse']:.6f}")
print(f"largest prediction difference {scores['smpc_max_prediction_error']:.1e}")
# [end-smpc]

shutil.rmtree(folder)  # the owners' files were only for this tutorial
