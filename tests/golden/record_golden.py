"""Record golden outputs with main before the reorganisation (commit c124a60): run it with the python of a
checkout of that commit at BASE (here /work/baseline), cwd = an empty folder, argument = the output folder;
its outputs are the files of tests/golden/ that tests/test_golden.py compares today's code with.

Writes into OUT: fixture .keras models (tiny, trained here with the old code) and the outputs of
the CLI commands, the served pyfunc models (in process: the code path `mlflow models serve` runs)
and the designer for fixed inputs, including the error messages of bad inputs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(sys.argv[1]).resolve()
OUT.mkdir(parents=True, exist_ok=True)
BASE = Path("/work/baseline")
DEEPDRAM = [str(BASE / ".venv/bin/deepdram")]
golden = {"cli": [], "pyfunc": [], "designer": []}


def cli(args, name):
    p = subprocess.run(DEEPDRAM + args, cwd=OUT, capture_output=True, text=True)
    golden["cli"].append({"name": name, "args": args, "returncode": p.returncode, "stdout": p.stdout,
                          "stderr": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""})


(OUT / "cli").mkdir(exist_ok=True)
os.chdir(OUT)
cli(["sample", "--zg", "3.5", "-n", "5", "--seed", "0", "-o", "cli/s35.csv"], "sample_zg35")
cli(["sample", "--zg", "2.5", "-n", "40", "--seed", "7", "-o", "cli/s25.parquet"], "sample_zg25_parquet")
cli(["sample", "--zg", "4.5", "-n", "3", "--seed", "1", "-o", "cli/s45.csv", "-q"], "sample_quiet")
cli(["sample", "--zg", "3.3", "-n", "3", "-o", "cli/bad.csv"], "sample_bad_zg")
cli(["sample", "--zg", "3.5", "-n", "3", "-o", "cli/bad.txt"], "sample_bad_ext")
cli(["simulate", "cli/s35.csv", "-o", "cli/p35.csv", "--stress"], "simulate_cells_stress")
cli(["simulate", "cli/s25.parquet", "-o", "cli/p25.csv"], "simulate_cells")
cli(["simulate", "cli/s35.csv", "-o", "cli/t35.csv", "--d1", "4", "--d2", "2", "--stress"], "simulate_tiling")
cli(["simulate", "cli/s35.csv", "-o", "cli/x.csv", "--d1", "3", "--d2", "4"], "simulate_bad_d1")
cli(["simulate", "cli/s35.csv", "-o", "cli/x.csv", "--d1", "4"], "simulate_missing_d2")
cli(["simulate", "cli/missing.csv", "-o", "cli/x.csv"], "simulate_missing_file")
df = pd.read_csv(OUT / "cli/s35.csv")
df.loc[1, "b05"] = 2
df.to_csv(OUT / "cli/badbits.csv", index=False)
cli(["simulate", "cli/badbits.csv", "-o", "cli/x.csv"], "simulate_bad_bits")
df = pd.read_csv(OUT / "cli/s35.csv")
df.loc[2, [f"b{k:02d}" for k in range(42)]] = 0
df.loc[2, "b00"] = 1
df.to_csv(OUT / "cli/disconnected.csv", index=False)
cli(["simulate", "cli/disconnected.csv", "-o", "cli/x.csv"], "simulate_disconnected")
sized = pd.read_csv(OUT / "cli/s35.csv")
sized["d1"] = [2, 4, 6, 2, 20]
sized["d2"] = [2, 2, 4, 8, 2]
sized.to_csv(OUT / "cli/sized.csv", index=False)
cli(["simulate", "cli/sized.csv", "-o", "cli/tsized.csv"], "simulate_sized_columns")

# --- tiny models, trained with the old code --------------------------------------------------------------
sys.path.insert(0, str(BASE))
from deepdram import fem, lattice, models, serving, tiling  # noqa: E402
from deepdram import design as D  # noqa: E402
from deepdram import designer as DES  # noqa: E402

designs = np.concatenate([lattice.sample_designs(z, 300, [5, int(z * 10)]) for z in (2.5, 3.5, 4.5)])
props = fem.cell_properties(designs)
rng = np.random.default_rng(3)
sizes = rng.choice(np.arange(2, 21, 2), size=(len(designs), 2))
tprops = tiling.solve_tilings(designs, sizes[:, 0], sizes[:, 1], threads=1).properties
fixtures = OUT / "models"
fixtures.mkdir(exist_ok=True)
cfg = models.RegressorConfig(hidden_layers=2, first_width=16, epochs=3, batch_size=64, learning_rate=3e-3,
                             symmetrize="all", seed=1)
fwd, _ = models.train_regressor(designs, props, None, None, cfg)
models.save_model(fwd, fixtures / "forward.keras")
cfg_sa = models.RegressorConfig(hidden_layers=2, first_width=16, epochs=3, batch_size=64, learning_rate=3e-3,
                                symmetrize="mirrors", features="homogenized", seed=2)
x44 = np.concatenate([designs, sizes], axis=1).astype(float)
sa, _ = models.train_regressor(x44, tprops, None, None, cfg_sa)
models.save_model(sa, fixtures / "size_agnostic.keras")
ccfg = models.CVAEConfig(latent_dim=8, encoder_hidden=[16], decoder_hidden=[16], epochs=3, batch_size=64,
                         learning_rate=3e-3, seed=3)
parts, _ = models.train_cvae(designs, props, designs[:100], props[:100], fixtures / "forward.keras", ccfg)
models.save_model(parts.generator, fixtures / "generator.keras")
fwd = models.load_model(fixtures / "forward.keras")
sa = models.load_model(fixtures / "size_agnostic.keras")
gen = models.load_model(fixtures / "generator.keras")


class Ctx:
    def __init__(self, artifacts):
        self.artifacts = artifacts


def pyfunc(kind, path, inp, label):
    cls = serving.PYFUNC_CLASSES[kind]()
    cls.load_context(Ctx({serving.ARTIFACT_KEY: str(path)}))
    try:
        out = cls.predict(None, inp)
        golden["pyfunc"].append({"kind": kind, "name": label, "ok": True, "columns": list(out.columns),
                                 "values": out.to_numpy().tolist()})
    except Exception as e:
        golden["pyfunc"].append({"kind": kind, "name": label, "ok": False, "error": str(e)})


rows = designs[:6].tolist()
pyfunc("forward", fixtures / "forward.keras", rows, "rows")
pyfunc("forward", fixtures / "forward.keras", [[1] * 42], "full_design")
pyfunc("forward", fixtures / "forward.keras", pd.DataFrame(designs[:3], columns=[f"b{k:02d}" for k in range(42)]).assign(extra=1), "named_extra_column")
pyfunc("forward", fixtures / "forward.keras", [[1] * 41 + [2]], "bad_bit")
pyfunc("forward", fixtures / "forward.keras", [[1] * 41], "short_row")
pyfunc("forward", fixtures / "forward.keras", [[0] * 42], "disconnected")
pyfunc("forward", fixtures / "forward.keras", [[1] * 41 + ["x"]], "string")
pyfunc("forward", fixtures / "forward.keras", pd.DataFrame({"b00": [1]}), "missing_columns")
pyfunc("size_agnostic", fixtures / "size_agnostic.keras", x44[:6].tolist(), "rows")
pyfunc("size_agnostic", fixtures / "size_agnostic.keras", [[1] * 42 + [3, 4]], "odd_size")
pyfunc("size_agnostic", fixtures / "size_agnostic.keras", [[1] * 42 + [22, 4]], "big_size")
pyfunc("size_agnostic", fixtures / "size_agnostic.keras", [[1] * 42 + [4, float("nan")]], "nan")
zin = np.concatenate([props[:4], np.random.default_rng(0).standard_normal((4, 8))], axis=1)
pyfunc("generator", fixtures / "generator.keras", zin.tolist(), "rows")
pyfunc("generator", fixtures / "generator.keras", [[0.1] * 11], "short_row")
pyfunc("generator", fixtures / "generator.keras", [[0.1, 0.1, 0.1, float("inf")] + [0.0] * 8], "inf")

# --- the designer (in process: the served code path) -------------------------------------------------------
des = DES.DesignerPyfunc()
des.load_context(Ctx({"generator": str(fixtures / "generator.keras"), "size_agnostic": str(fixtures / "size_agnostic.keras"),
                      "forward": str(fixtures / "forward.keras")}))


def designer(inp, params, label):
    try:
        out = des.predict(None, inp, params)
        golden["designer"].append({"name": label, "ok": True, "columns": list(out.columns),
                                   "values": json.loads(out.to_json(orient="values"))})
    except Exception as e:
        golden["designer"].append({"name": label, "ok": False, "error": str(e)})


cols = ["E11", "E22", "nu12", "nu21", "d1", "d2"]
designer(pd.DataFrame([[0.03, 0.03, -0.2, 0.2, 4, 4], [0.05, 0.04, 0.3, 0.2, 1, 1]], columns=cols),
         {"n_candidates": 3000, "top_k": 6, "seed": 2}, "two_requests")
designer(pd.DataFrame([[0.03, 0.03, 0.5, 0.5, 10, 2, 2000, 4, 5, 0.05]], columns=cols + ["n_candidates", "top_k", "seed", "mse_threshold"]),
         None, "per_row_options")
designer(pd.DataFrame([[0.03, 0.03, -0.2, 0.2, 3, 4]], columns=cols), {"n_candidates": 100}, "odd_size")
designer(pd.DataFrame([[0.03, 0.03, -0.2, 0.2, 4, 4]], columns=cols), {"n_candidates": 10**7}, "too_many")
designer(pd.DataFrame([[0.5, 0.03, -0.2, 0.2, 4, 4]], columns=cols), {"n_candidates": 100}, "unreachable")
designer(pd.DataFrame([[0.03, 0.03, -0.2, 4, 4]], columns=cols[:3] + cols[4:]), None, "missing_column")
designer(pd.DataFrame([[0.03, 0.03, -0.2, 0.2, 4, 4]], columns=cols), {"bogus": 1}, "unknown_param")

# old library design() on a unit cell and a tiling request, full tables
m = D.load_keras_models({"generator": fixtures / "generator.keras", "size_agnostic": fixtures / "size_agnostic.keras",
                         "forward": fixtures / "forward.keras"})
for spec in ({"target": [0.04, 0.05, 0.2, 0.1], "d1": 2, "d2": 6, "n_candidates": 5000, "top_k": 8, "seed": 4, "name": "tiling"},
             {"target": [0.04, 0.05, 0.2, 0.1], "d1": 1, "d2": 1, "n_candidates": 5000, "top_k": 8, "seed": 4, "name": "cell",
              "rule": "bernoulli"}):
    r = D.design(m, D.parse_request(spec), threads=1)
    r.table.to_csv(OUT / f"design_{spec['name']}.csv", index=False)
    json.dump(r.summary, open(OUT / f"design_{spec['name']}_summary.json", "w"), indent=1, default=float)
(OUT / "golden.json").write_text(json.dumps(golden, indent=1, default=float))
print("recorded", {k: len(v) for k, v in golden.items()})
