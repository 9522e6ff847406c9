#!/usr/bin/env bash
# One GPU session's worth of results from one command, run from the repository root:
#
#     bash benchmarks/gpu_session.sh                  # on the GPU machine (one device call)
#     bash benchmarks/gpu_session.sh --fetch-wheels   # here, beforehand: wheels of the packages
#                                                     # the GPU image lacks, into $WHEELS (.whl)
#
# Stages, each bounded in time; a failed stage is recorded and the next one still runs:
#   environment  carried wheels installed (--no-index: pip never resolves torch), torch/CUDA facts
#   cuda_tests   the tests that need CUDA (files that test torch.cuda.is_available, -k cuda), in
#                the background while the corpus is made: they use the GPU, the corpus the CPUs
#   corpus       the built-in espeak-ng corpus, CORPUS_N utterances on every core, unless CORPUS names one
#   features     the corpus's log-mel and F0 cache on every core, so training's clock is not spent on
#                it (the trainer fills it in one process: ~0.1 s an utterance)
#   train        the demo recipe on DEVICE for TRAIN_SECONDS at most, stopped by SIGTERM, on which
#                the trainer finishes its step, validates and writes RUN/checkpoints/last.pt
#   transfer     benchmarks/transfer_check.py on that checkpoint
#
# Everything goes into ONE JSON, $OUT/gpu_session.json where the device tool sets OUT, else
# gpu_session_out/gpu_session.json. It is rewritten after every stage, so a run cut short still
# returns what it measured. With KEEP_MODEL=1 the trained weights come back too (model.pt beside
# it: the checkpoint without its optimizer state, ~10 MB, loadable by Synthesizer.from_checkpoint).
#
# Time: a device command may run 600 s, so the script keeps to SESSION_SECONDS (570) in all. The
# training budget is TRAIN_SECONDS or what is left after reserving STOP_GRACE and TRANSFER_SECONDS,
# whichever is less: on the H200 expect 5-6 minutes of training out of the 8 asked for.
set -u -o pipefail

# ------------------------------------------------------------------------------------ settings
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}                    # the recipe's device: cuda, auto or cpu
SESSION_SECONDS=${SESSION_SECONDS:-570}   # the whole script
WHEELS=${WHEELS:-.whl}                    # carried wheels, installed when the folder holds any
RUN_CUDA_TESTS=${RUN_CUDA_TESTS:-1}
TEST_SECONDS=${TEST_SECONDS:-120}
CORPUS=${CORPUS:-}                        # an existing corpus folder; empty: make one
CORPUS_N=${CORPUS_N:-1200}
CORPUS_SEED=${CORPUS_SEED:-0}
WORKERS=${WORKERS:-$(nproc)}              # processes for the corpus and the feature cache
CORPUS_SECONDS=${CORPUS_SECONDS:-180}
FEATURE_SECONDS=${FEATURE_SECONDS:-120}
TRAIN_SECONDS=${TRAIN_SECONDS:-480}
MAX_STEPS=${MAX_STEPS:-1000000}           # never reached: the time budget ends the run
STOP_GRACE=${STOP_GRACE:-45}              # after SIGTERM: last step, validation, checkpoint; then SIGKILL
TRAIN_OVERRIDES=${TRAIN_OVERRIDES:-}      # recipe changes, e.g. "data.batch_size=64 val_every=500"
TRANSFER_SECONDS=${TRANSFER_SECONDS:-100}
N_TEXTS=${N_TEXTS:-4}
VOCODER=${VOCODER:-}                      # empty: source-filter if available, else the best available
VOICE=${VOICE:-en-us}
MAX_DECODER_STEPS=${MAX_DECODER_STEPS:-200}
KEEP_MODEL=${KEEP_MODEL:-1}
OUT_DIR=${OUT:-gpu_session_out}
WORK=${WORK:-}                            # corpus, run and logs (large; not returned)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ "${1:-}" = --fetch-wheels ]; then
    # What the GPU image lacks of the package's dependencies (KINDS.md lists what it has), at the
    # versions installed here, for its Python 3.12. --no-deps: nothing else is resolved, torch least.
    pins=$("$PYTHON" - <<'PY'
from importlib.metadata import PackageNotFoundError, version
for name in ("librosa audioread decorator pooch platformdirs soxr soundfile cffi pycparser "
             "praat-parselmouth espeakng-loader Unidecode").split():
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
PY
    ) || exit 1
    platforms=()
    for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
        platforms+=(--platform "${p}_x86_64")
    done
    # shellcheck disable=SC2086  # one pin a word
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$WHEELS" $pins || exit 1
    du -sh "$WHEELS"
    git check-ignore -q "$WHEELS" 2>/dev/null
    [ $? = 1 ] && echo "note: $WHEELS is not git-ignored; ignore it (echo /$WHEELS/ >> .git/info/exclude) and name it in the run's carry"
    exit 0
fi

[ -n "$WORK" ] || WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_session.XXXXXX")
mkdir -p "$WORK/stages" "$OUT_DIR" || exit 1
STARTED=$(date +%s)
DEADLINE=$((STARTED + SESSION_SECONDS))
RUN=$WORK/run
SUMMARY=$OUT_DIR/gpu_session.json
export WORK SUMMARY STARTED

left() { echo $((DEADLINE - $(date +%s))); }
# a stage's time limit: its own setting, or what is left of the session if that is less
cap() { local l; l=$(left); if (($1 < l)); then echo "$1"; elif ((l > 1)); then echo "$l"; else echo 1; fi; }

# record NAME STATUS START [DETAILS_JSON [LOG]]: writes the stage's entry, then the whole JSON again
record() {
    STAGE=$1 STATUS=$2 STAGE_START=$3 DETAILS=${4:-} LOG=${5:-} "$PYTHON" - <<'PY'
import json, math, os, time
from pathlib import Path

def clean(value):
    """JSON has no NaN or infinity (a diverged loss in metrics.jsonl has them): null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value

work, summary = Path(os.environ["WORK"]), Path(os.environ["SUMMARY"])
entry = {"status": os.environ["STATUS"], "seconds": round(time.time() - float(os.environ["STAGE_START"]), 1)}
details, log = os.environ["DETAILS"], os.environ["LOG"]
if details and Path(details).is_file():
    try:
        entry.update({k: v for k, v in json.loads(Path(details).read_text()).items() if k not in entry})
    except ValueError as exc:  # a stage that died before writing its details: the log says why
        entry["details_error"] = f"{details}: {exc}"
if log and Path(log).is_file():
    entry["log_tail"] = Path(log).read_text(errors="replace").splitlines()[-30:]
stages = work / "stages"
done = sorted(stages.glob("*.json"))
(stages / f"{len(done):02d}_{os.environ['STAGE']}.json").write_text(json.dumps(clean(entry)))
report = json.loads((work / "header.json").read_text())
for path in sorted(stages.glob("*.json")):
    report[path.stem[3:]] = json.loads(path.read_text())
report["elapsed_seconds"] = round(time.time() - float(os.environ["STARTED"]), 1)
temporary = summary.with_suffix(".tmp")
temporary.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
temporary.replace(summary)
PY
}

echo "gpu_session: work in $WORK, results in $SUMMARY"
SETTINGS="DEVICE SESSION_SECONDS RUN_CUDA_TESTS TEST_SECONDS CORPUS CORPUS_N CORPUS_SEED WORKERS CORPUS_SECONDS
FEATURE_SECONDS TRAIN_SECONDS MAX_STEPS STOP_GRACE TRAIN_OVERRIDES TRANSFER_SECONDS N_TEXTS VOCODER VOICE
MAX_DECODER_STEPS KEEP_MODEL WORK"
for name in $SETTINGS; do export "$name"; done
SETTINGS=$SETTINGS "$PYTHON" - <<'PY' || exit 1
import json, os, subprocess, time

def git(*args):  # the device's copy of the tree may come without git or without .git
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""

commit = git("rev-parse", "HEAD") or None
dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
header = {"script": "benchmarks/gpu_session.sh", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "git_commit": commit, "git_dirty": dirty,
          "settings": {name: os.environ[name] for name in os.environ["SETTINGS"].split()}}
with open(os.path.join(os.environ["WORK"], "header.json"), "w") as f:
    json.dump(header, f)
PY

# ----------------------------------------------------------------------------- environment
t=$(date +%s.%N)
status=ok
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    # --no-index: only the carried files; --no-deps: pip resolves nothing, so never torch
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "$WHEELS"/*.whl >"$WORK/wheels.log" 2>&1; then
        export PYTHONPATH="$REPO:$WORK/site${PYTHONPATH#"$REPO"}"
    else
        status=failed
    fi
fi
# "auto" is resolved once here, for the transfer check; the recipe gets DEVICE as given
"$PYTHON" - >"$WORK/environment.json" 2>"$WORK/environment.log" <<'PY'
import importlib.util, json, os, platform, re, sys, tomllib
facts = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
         "wheels_installed": sorted(os.listdir(os.path.join(os.environ["WORK"], "site")))
         if os.path.isdir(os.path.join(os.environ["WORK"], "site")) else []}
# the package's declared dependencies that do not import here
modules = {"praat-parselmouth": "parselmouth", "espeakng-loader": "espeakng_loader", "unidecode": "unidecode"}
with open("pyproject.toml", "rb") as f:
    requirements = tomllib.load(f)["project"]["dependencies"]
names = [re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() for r in requirements]
facts["missing_modules"] = [n for n in names if importlib.util.find_spec(modules.get(n, n.replace("-", "_"))) is None]
import torch
cuda = torch.cuda.is_available()
facts.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
             cuda_available=cuda)
if cuda:
    props = torch.cuda.get_device_properties(0)
    facts.update(gpu=props.name, gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                 gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                 bf16_supported=torch.cuda.is_bf16_supported())
device = os.environ["DEVICE"]
facts["transfer_device"] = ("cuda" if cuda else "cpu") if device == "auto" else device
print(json.dumps(facts))
sys.exit(3 if facts["missing_modules"] else 0)
PY
case $? in 0) ;; 3) status=missing_packages ;; *) status=failed ;; esac
TRANSFER_DEVICE=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["transfer_device"])' \
                  "$WORK/environment.json" 2>/dev/null) || TRANSFER_DEVICE=$DEVICE
record environment "$status" "$t" "$WORK/environment.json" "$WORK/environment.log"

# ------------------------------------------------------------------ CUDA tests (background)
tests_pid=""
if [ "$RUN_CUDA_TESTS" = 1 ]; then
    tests_start=$(date +%s.%N)
    mapfile -t test_files < <(grep -l "torch.cuda.is_available" tests/test_*.py)
    (
        timeout --signal=TERM --kill-after=10 "$(cap "$TEST_SECONDS")" "$PYTHON" -m pytest -q -x -k cuda \
            -p no:cacheprovider --junitxml="$WORK/cuda_tests.xml" "${test_files[@]}" >"$WORK/cuda_tests.log" 2>&1
        echo $? >"$WORK/cuda_tests.rc"
    ) &
    tests_pid=$!
else
    record cuda_tests skipped "$(date +%s.%N)"
fi

finish_tests() {
    [ -n "$tests_pid" ] || return 0
    wait "$tests_pid"
    tests_pid=""
    TEST_FILES="${test_files[*]}" TESTS_RC=$(cat "$WORK/cuda_tests.rc" 2>/dev/null || echo missing) "$PYTHON" - >"$WORK/cuda_tests.json" <<'PY'
import json, os, xml.etree.ElementTree as ET
rc = os.environ["TESTS_RC"]
out = {"rc": int(rc) if rc.lstrip("-").isdigit() else None, "files": os.environ["TEST_FILES"].split()}
try:
    suite = ET.parse(os.path.join(os.environ["WORK"], "cuda_tests.xml")).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    cases = suite.iter("testcase")
    out.update(counts, passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
               cases={f"{c.get('classname')}::{c.get('name')}":
                      "failed" if c.find("failure") is not None or c.find("error") is not None
                      else "skipped" if c.find("skipped") is not None else "passed" for c in cases})
except (OSError, ET.ParseError, AttributeError) as exc:
    out["junit_error"] = str(exc)
print(json.dumps(out))
PY
    local status
    case $(cat "$WORK/cuda_tests.rc" 2>/dev/null) in
        0) status=ok ;;
        5) status=no_tests ;;            # pytest: nothing selected
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    record cuda_tests "$status" "$tests_start" "$WORK/cuda_tests.json" "$WORK/cuda_tests.log"
}

# ----------------------------------------------------------------------------------- corpus
t=$(date +%s.%N)
if [ -n "$CORPUS" ]; then
    status=given
    [ -f "$CORPUS/factors.csv" ] || status=failed
elif [ -f "$WORK/corpus/factors.csv" ]; then
    CORPUS=$WORK/corpus status=reused     # a WORK given again: the corpus of the first call
else
    CORPUS=$WORK/corpus
    timeout --signal=TERM --kill-after=10 "$(cap "$CORPUS_SECONDS")" "$PYTHON" -m prosody_vae make-corpus \
        --out "$CORPUS" --n "$CORPUS_N" --seed "$CORPUS_SEED" --workers "$WORKERS" >"$WORK/corpus.log" 2>&1
    case $? in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
fi
export CORPUS
"$PYTHON" - >"$WORK/corpus.json" <<'PY'
import json, os
path = os.path.join(os.environ["CORPUS"], "metadata.csv")
n = sum(1 for line in open(path, encoding="utf-8") if line.strip()) if os.path.isfile(path) else 0
print(json.dumps({"path": os.environ["CORPUS"], "utterances": n}))
PY
record corpus "$status" "$t" "$WORK/corpus.json" "$WORK/corpus.log"

# ------------------------------------------------------------------------- training config
# The demo recipe with DEVICE and TRAIN_OVERRIDES applied, written as TOML again (the CLI reads a
# file; TOML forbids a key twice, so overrides cannot just be appended) and checked by load_config.
export TRAIN_TOML=$WORK/train.toml
"$PYTHON" - >"$WORK/config.log" 2>&1 <<'PY'
import json, os, tomllib
from prosody_vae.training.config import load_config, recipe_config

config = tomllib.loads(recipe_config("demo").read_text(encoding="utf-8"))
config["device"] = os.environ["DEVICE"]
for item in os.environ.get("TRAIN_OVERRIDES", "").split():
    key, _, text = item.partition("=")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: a string
    *tables, name = key.split(".")
    table = config
    for t in tables:
        table = table.setdefault(t, {})
    table[name] = value

def toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)

lines = [f"{k} = {toml(v)}" for k, v in config.items() if not isinstance(v, dict)]
for table, values in config.items():
    if isinstance(values, dict):
        lines += ["", f"[{table}]"] + [f"{k} = {toml(v)}" for k, v in values.items()]
with open(os.environ["TRAIN_TOML"], "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
c = load_config(os.environ["TRAIN_TOML"])
print(f"train.toml: device {c.device}, batch {c.data.batch_size}, n_val {c.data.n_val}, val_every {c.val_every}")
PY
config_rc=$?

# --------------------------------------------------------------------------------- features
t=$(date +%s.%N)
if [ "$config_rc" = 0 ] && [ -f "$CORPUS/metadata.csv" ]; then
    timeout --signal=TERM --kill-after=10 "$(cap "$FEATURE_SECONDS")" "$PYTHON" - >"$WORK/features.json" \
        2>"$WORK/features.log" <<'PY'
import json, os
from multiprocessing import get_context
from pathlib import Path
from prosody_vae.training.config import load_config
from prosody_vae.data.ljspeech import MelCache, read_metadata

# the cache the trainer reads (training_data.build_data): same folder, audio config and F0 settings
config = load_config(os.environ["TRAIN_TOML"])
corpus = Path(os.environ["CORPUS"])
folder = Path(config.data.cache_dir) if config.data.cache_dir else corpus / ".mel_cache"
cache = MelCache(folder, config.audio)
missing = [u for u in read_metadata(corpus) if not cache.is_cached(u)]

def fill(utt):
    cache.get(utt)

# fork: the workers inherit `fill` (this script has no file to import it from); one torch thread
# each, or WORKERS processes would each start a thread per core
import torch
with get_context("fork").Pool(int(os.environ["WORKERS"]), torch.set_num_threads, (1,)) as pool:
    pool.map(fill, missing, chunksize=8)
print(json.dumps({"computed": len(missing), "cache": str(cache.dir)}))
PY
    case $? in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
else
    status=skipped
fi
record features "$status" "$t" "$WORK/features.json" "$WORK/features.log"

# the GPU to the trainer alone from here, so its steps/s are its own
finish_tests

# ------------------------------------------------------------------------------------ train
t=$(date +%s.%N)
budget=$(($(left) - STOP_GRACE - TRANSFER_SECONDS - 15))
((budget > TRAIN_SECONDS)) && budget=$TRAIN_SECONDS
((budget < 10)) && budget=10
export TRAIN_BUDGET=$budget RUN
resume=()
[ -e "$RUN/checkpoints/last.pt" ] && resume=(--resume)   # a WORK given again: continue its run
if [ "$config_rc" = 0 ] && [ -f "$CORPUS/metadata.csv" ]; then
    echo "gpu_session: training for ${budget} s on $DEVICE"
    # --preserve-status: the trainer's own exit code (0 after a clean SIGTERM stop), not timeout's 124
    train_start=$(date +%s.%N)
    timeout --preserve-status --signal=TERM --kill-after="$STOP_GRACE" "$budget" \
        "$PYTHON" -m prosody_vae train --config "$TRAIN_TOML" --data "$CORPUS" --out "$RUN" \
        --max-steps "$MAX_STEPS" "${resume[@]}" >"$WORK/train.log" 2>&1
    export TRAIN_RC=$?
    export TRAIN_START=$train_start TRAIN_END=$(date +%s.%N)
    "$PYTHON" - >"$WORK/train.json" 2>>"$WORK/train.log" <<'PY'
import json, os, re, statistics, time
from pathlib import Path

run, log = Path(os.environ["RUN"]), Path(os.environ["WORK"], "train.log").read_text(errors="replace")
out = {"rc": int(os.environ["TRAIN_RC"]), "budget_seconds": int(os.environ["TRAIN_BUDGET"]),
       "run": str(run), "config": Path(os.environ["TRAIN_TOML"]).read_text()}
# how the run ended, in the CLI's own words
ended = re.search(r"^(stopped by signal|finished) at step (\d+); checkpoint (.+)$", log, re.M)
out["exit"] = ended.group(1) if ended else "no clean exit (killed, or failed before training)"
started = re.search(r"training on (\d+) x (\S+) \(bf16 (on|off)\)", log)
resumed = re.search(r"resumed from .* at step (\d+)", log)
if started:
    out.update(device=started.group(2), bf16=started.group(3) == "on")
first_step = int(resumed.group(1)) if resumed else 0
last = run / "checkpoints" / "last.pt"
out["checkpoint"] = str(last.resolve()) if last.exists() else None
if last.exists():
    from prosody_vae.training.checkpoint import load_checkpoint, save_checkpoint
    state = load_checkpoint(last)  # proves it is whole, not just present
    out["checkpoint_step"] = state["step"]
    out["steps"] = state["step"] - first_step
    if os.environ["KEEP_MODEL"] == "1":  # the weights, home: small enough to come back from the device
        keep = Path(os.environ["SUMMARY"]).parent / "model.pt"
        save_checkpoint(keep, {k: v for k, v in state.items() if k not in ("optimizer", "rng")})
        out["model_copy"] = str(keep)
records = []
metrics = run / "metrics.jsonl"
if metrics.exists():
    for line in metrics.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass  # a line half-written by a killed run
train = [r for r in records if r.get("split") == "train"]
val = [r for r in records if r.get("split") == "val"]
if train:
    rates = [r["steps_per_s"] for r in train if "steps_per_s" in r]
    out["steps_per_s_median_of_log_windows"] = statistics.median(rates) if rates else None
    out["last_train"] = train[-1]
if val:
    out["final_val"] = val[-1]
    out["val_curve"] = [{k: r[k] for k in ("step", "postnet_l1", "kl", "align", "f0", "voicing") if k in r}
                        for r in val]
out["warnings"] = [r for r in records if r.get("split") == "warning"]
# over the whole command: start-up, feature checks, validations and the final checkpoint included
out["wall_seconds"] = round(float(os.environ["TRAIN_END"]) - float(os.environ["TRAIN_START"]), 1)
if out.get("steps"):
    out["steps_per_s_overall"] = out["steps"] / out["wall_seconds"]
print(json.dumps(out))
PY
    case $TRAIN_RC in 0) status=ok ;; 137) status=killed ;; *) status=failed ;; esac
    # a clean exit that left no checkpoint would be a trainer bug: say so rather than "ok"
    [ "$status" = ok ] && grep -q '"checkpoint": null' "$WORK/train.json" 2>/dev/null && status=no_checkpoint
    record train "$status" "$t" "$WORK/train.json" "$WORK/train.log"
elif [ "$config_rc" != 0 ]; then
    record train config_failed "$t" "" "$WORK/config.log"
else
    record train skipped "$t"
fi
CHECKPOINT=$RUN/checkpoints/last.pt

# --------------------------------------------------------------------------------- transfer
t=$(date +%s.%N)
if [ -e "$CHECKPOINT" ] && [ -f "$CORPUS/factors.csv" ]; then
    vocoder=()
    [ -n "$VOCODER" ] && vocoder=(--vocoder "$VOCODER")
    timeout --signal=TERM --kill-after=10 "$(cap "$TRANSFER_SECONDS")" "$PYTHON" benchmarks/transfer_check.py \
        --checkpoint "$CHECKPOINT" --corpus "$CORPUS" --device "$TRANSFER_DEVICE" --n-texts "$N_TEXTS" \
        --voice "$VOICE" --max-decoder-steps "$MAX_DECODER_STEPS" "${vocoder[@]}" \
        --out "$WORK/transfer.json" >"$WORK/transfer.log" 2>&1
    case $? in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
else
    status=skipped
fi
record transfer "$status" "$t" "$WORK/transfer.json" "$WORK/transfer.log"

# ------------------------------------------------------------------------------------- done
# exit 1 when a stage went wrong, so the caller sees it before opening the JSON
"$PYTHON" - <<'PY'
import json, os, sys
r = json.load(open(os.environ["SUMMARY"]))
print(f"gpu_session: {r['elapsed_seconds']} s; " + ", ".join(f"{k} {v['status']}" for k, v in r.items()
                                                             if isinstance(v, dict) and "status" in v))
train, transfer = r.get("train", {}), r.get("transfer", {})
print(f"  trained {train.get('steps')} steps in a {train.get('budget_seconds')} s budget on {train.get('device')}, "
      f"{train.get('steps_per_s_median_of_log_windows')} steps/s; final val postnet_l1 "
      f"{train.get('final_val', {}).get('postnet_l1')}")
if "summary" in transfer:
    print(f"  transfer ({transfer['vocoder']}): {transfer['summary']}")
print(f"  wrote {os.environ['SUMMARY']}")
wrong = ("failed", "timeout", "killed", "no_checkpoint", "config_failed", "missing_packages")
sys.exit(any(isinstance(v, dict) and v.get("status") in wrong for v in r.values()))
PY
