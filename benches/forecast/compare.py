"""Sokana's forecasts against statsforecast's, series by series, in one run.

For each series the last `h` points are held out; every model is fitted on the rest and asked for
`h` points with a 95 % interval. Ours is `sokana forecast run --input TRAIN.csv --horizon h
--format csv` (the whole process, timed from outside); statsforecast's models (AutoARIMA, AutoETS,
AutoTheta, MSTL, SeasonalNaive) are timed around their fit-and-forecast, each on its own, after one
warm-up call. Every model is scored the same way: MASE (over the training set's in-sample seasonal
naive error), sMAPE, the share of held-out points inside the 95 % interval.

Usage: python3 compare.py SOKANA_BIN SERIES_DIR   (SERIES_DIR holds the Sokana series' CSVs)
"""

import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from statsforecast import StatsForecast
from statsforecast.models import MSTL, AutoARIMA, AutoETS, AutoTheta, SeasonalNaive
from statsforecast.utils import AirPassengersDF

HERE = os.path.dirname(os.path.abspath(__file__))


def read(path):
    with open(path) as f:
        rows = list(csv.reader(f))[1:]
    return pd.DataFrame({"ds": pd.to_datetime([r[0] for r in rows], utc=True).tz_localize(None),
                         "y": [float(r[1]) if r[1] else 0.0 for r in rows]})


def series(sokana_dir):
    air = AirPassengersDF[["ds", "y"]].copy()
    out = [("air_passengers", air, "MS", [12], 12, True)]
    for name in ["collected", "leads", "hours", "postpartum_hours", "contract_value"]:
        out.append((f"sokana_{name}", read(os.path.join(sokana_dir, f"{name}.csv")), "MS", [12], 12, True))
    out.append(("austres", read(os.path.join(HERE, "data", "austres.csv")), "QS-MAR", [4], 8, False))
    # The last six weeks: AutoARIMA needs about ten minutes for all 3,600 hours.
    vic_elec = read(os.path.join(HERE, "data", "vic_elec.csv")).iloc[-6 * 168:].reset_index(drop=True)
    out.append(("vic_elec", vic_elec, "h", [24, 168], 24, False))
    return out


def scores(train, test, m, point, lower, upper):
    train, test = np.asarray(train), np.asarray(test)
    point, lower, upper = np.asarray(point), np.asarray(lower), np.asarray(upper)
    scale = np.mean(np.abs(train[m:] - train[:-m]))
    if scale == 0:
        scale = np.mean(np.abs(np.diff(train))) or 1.0
    mase = np.mean(np.abs(test - point)) / scale
    denominator = np.abs(test) + np.abs(point)
    smape = np.mean(np.where(denominator == 0, 0.0, 200 * np.abs(test - point) / np.where(denominator == 0, 1, denominator)))
    covered = int(np.sum((lower <= test) & (test <= upper)))
    return mase, smape, covered


def ours(binary, train, h):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.csv")
        train.assign(ds=train["ds"].dt.strftime("%Y-%m-%d %H:%M:%S"))[["ds", "y"]].to_csv(path, index=False, header=["time", "value"])
        start = time.perf_counter()
        done = subprocess.run([binary, "forecast", "run", "--input", path, "--horizon", str(h), "--format", "json"],
                              capture_output=True, text=True, check=True)
        elapsed = time.perf_counter() - start
    answer = json.loads(done.stdout)
    rows = [r for r in answer["rows"] if r["kind"] == "forecast"]
    return ([r["value"] for r in rows], [r["lower_95"] for r in rows], [r["upper_95"] for r in rows],
            elapsed, answer["model"])


def theirs(model, train, freq, h):
    df = train.assign(unique_id="s")
    sf = StatsForecast(models=[model], freq=freq, n_jobs=1)
    start = time.perf_counter()
    fc = sf.forecast(df=df, h=h, level=[95])
    elapsed = time.perf_counter() - start
    name = repr(model)
    return (fc[name].to_numpy(), fc[f"{name}-lo-95"].to_numpy(), fc[f"{name}-hi-95"].to_numpy(), elapsed)


def statsforecast_models(seasons):
    m = seasons[0]
    return {
        "AutoARIMA": lambda: AutoARIMA(season_length=m),
        "AutoETS": lambda: AutoETS(season_length=m),
        "AutoTheta": lambda: AutoTheta(season_length=m),
        "MSTL": lambda: MSTL(season_length=seasons),
        "SeasonalNaive": lambda: SeasonalNaive(season_length=m),
    }


def geomean(values):
    values = [max(v, 1e-9) for v in values]
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main():
    binary, sokana_dir = sys.argv[1], sys.argv[2]
    # Warm-up: the first call of each statsforecast model pays for imports and compilation.
    warm = AirPassengersDF[["ds", "y"]].iloc[:48]
    for make in statsforecast_models([12]).values():
        theirs(make(), warm, "MS", 12)
    results = {}  # model -> list of (series, mase, smape, covered, points, seconds)
    chosen = {}
    print(f"{'series':22} {'model':14} {'MASE':>7} {'sMAPE':>7} {'cover95':>8} {'seconds':>8}")
    for name, df, freq, seasons, h, monthly in series(sokana_dir):
        train, test = df.iloc[:-h], df["y"].to_numpy()[-h:]
        m = seasons[0]
        point, lower, upper, seconds, model = ours(binary, train, h)
        chosen[name] = model
        runs = {"sokana": (point, lower, upper, seconds)}
        for label, make in statsforecast_models(seasons).items():
            runs[label] = theirs(make(), train, freq, h)
        for label, (point, lower, upper, seconds) in runs.items():
            mase, smape, covered = scores(train["y"].to_numpy(), test, m, point, lower, upper)
            results.setdefault(label, []).append((name, monthly, mase, smape, covered, h, seconds))
            print(f"{name:22} {label:14} {mase:7.3f} {smape:7.2f} {covered:4d}/{h:<3d} {seconds:8.3f}")
        print(f"{'':22} sokana chose {model}")
    summary = {}
    print()
    print(f"{'model':14} {'gm MASE (6 monthly)':>20} {'gm MASE (all)':>14} {'mean sMAPE':>11} {'cover95':>9} {'seconds':>8}")
    for label, rows in results.items():
        monthly = [r[2] for r in rows if r[1]]
        covered = sum(r[4] for r in rows)
        points = sum(r[5] for r in rows)
        seconds = sum(r[6] for r in rows)
        summary[label] = {
            "geomean_mase_monthly": geomean(monthly),
            "geomean_mase_all": geomean([r[2] for r in rows]),
            "mean_smape": sum(r[3] for r in rows) / len(rows),
            "coverage_95": covered / points,
            "seconds": seconds,
        }
        s = summary[label]
        print(f"{label:14} {s['geomean_mase_monthly']:20.3f} {s['geomean_mase_all']:14.3f} {s['mean_smape']:11.2f} "
              f"{s['coverage_95']:9.1%} {s['seconds']:8.3f}")
    best = min((l for l in summary if l != "sokana"), key=lambda l: summary[l]["geomean_mase_monthly"])
    ours_summary = summary["sokana"]
    print()
    print(f"best statsforecast model on the monthly series: {best} ({summary[best]['geomean_mase_monthly']:.3f}); "
          f"sokana {ours_summary['geomean_mase_monthly']:.3f} "
          f"({ours_summary['geomean_mase_monthly'] / summary[best]['geomean_mase_monthly']:.2f}x)")
    print(f"speed: AutoARIMA {summary['AutoARIMA']['seconds']:.2f} s, sokana {ours_summary['seconds']:.2f} s "
          f"({summary['AutoARIMA']['seconds'] / ours_summary['seconds']:.1f}x faster)")
    print(f"sokana's 95 % intervals covered {ours_summary['coverage_95']:.1%} of held-out points")
    print(json.dumps({"chosen": chosen, "summary": summary}))


if __name__ == "__main__":
    main()
