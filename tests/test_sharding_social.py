"""The social model sharded over 4 CPU devices gives exactly the single-device run.

Metrics, samples, the event trace and the whole final state (stance, follow rows, followers,
the post ring buffer, ...) are compared with ``np.array_equal``, in a subprocess with 4 host devices.
"""
import textwrap

from conftest import run_script_on_devices

SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    assert len(jax.devices()) == 4, jax.devices()
    from scenarios import load_scenario
    from simcore.models import build
    from simcore.runs import make_simulation

    CASES = {  # name: (scenario, overrides, steps)
        "misinformation": ("misinformation_small", [], 20),
        "polarization": ("polarization_small", [], 20),
        "herd_effect": ("herd_effect_small", [], 20),
        # active_cap reaches n_users: the active slots, feeds and events are split over devices too
        "busy": ("polarization_small", ["model.params.activity_rate=0.9",
                                        "model.params.feed={interest: 0.5, hot: 0.1, network: 0.2, random: 0.2}"], 8),
    }
    out = {}
    for case, (name, overrides, steps) in CASES.items():
        res = []
        for devices in (1, 4):
            sc = load_scenario(name, overrides + [f"run.devices={devices}"])
            b = build(sc, steps=steps)
            start = jax.device_get(b.state)
            sim = make_simulation(sc, b, 0)
            c = sim.advance(steps)
            arrays = {f: getattr(sim.state, f) for f in ("stance", "follows", "followers", "interest", "post_id",
                                                         "active")}
            arrays["activity"] = sim.params["activity"]
            spec = {f: list(getattr(x.sharding, "spec", ())) for f, x in arrays.items()}  # [] = replicated
            res.append((c, jax.device_get(sim.state), spec, start))
        (c1, s1, _, st0), (c4, s4, spec4, _) = res
        m, ev = c1.metrics, c1.events
        valid = ev["valid"]
        out[case] = {
            "metrics_differ": sorted(k for k in m if not np.array_equal(m[k], c4.metrics[k])),
            "metric_names": sorted(m) == sorted(c4.metrics),
            "samples_differ": sorted(k for k in c1.samples if not np.array_equal(c1.samples[k], c4.samples[k])),
            "events_differ": sorted(k for k in ev if not np.array_equal(ev[k], c4.events[k])),
            "state_differ": sorted(f for f in s1.__dict__ if not np.array_equal(getattr(s1, f), getattr(s4, f))),
            "n_users": int(st0.stance.shape[0]), "active_cap": int(st0.active.shape[0]),
            "spec4": spec4,
            "events": int(valid.sum()),
            "created": int(s1.n_posts - st0.n_posts),
            "n": {k[2:]: int(m[k].sum()) for k in m if k.startswith("n_")},
            "moved": float(np.mean(s1.stance != st0.stance)),
            "follow_rows_changed": int(np.sum(np.any(s1.follows != st0.follows, axis=1))),
            "followers_changed": int(np.sum(s1.followers != st0.followers)),
            "stance_var_steps": len(np.unique(m["stance_var"])),
            "extra": {k: int(m[k].sum()) for k in m if k.startswith(("cascade_size__", "likes__", "dislikes__"))},
        }
    print(json.dumps(out))
""")


def test_social_sharded_runs_equal_single_device_runs(cli_env):
    out = run_script_on_devices(SCRIPT, cli_env, timeout=900)
    assert set(out) == {"misinformation", "polarization", "herd_effect", "busy"}
    for case, r in out.items():
        # split along the agent axis, not replicated: per-user state, params, and the post buffer
        # (post_capacity >= n_users and divisible by 4 in these scenarios)
        for f in ("stance", "follows", "followers", "interest", "post_id", "activity"):
            assert r["spec4"][f][:1] == ["agents"], (case, f, r["spec4"])
        assert r["metric_names"], case
        assert r["metrics_differ"] == [], (case, r["metrics_differ"])
        assert r["samples_differ"] == [], (case, r["samples_differ"])
        assert r["events_differ"] == [], (case, r["events_differ"])
        assert r["state_differ"] == [], (case, r["state_differ"])
        # a real run, so the equality is not that of two idle platforms
        assert r["events"] > 500 and r["created"] > 100, (case, r)
        assert r["n"]["like"] > 100 and r["n"]["repost"] > 10 and r["n"]["follow"] > 10, (case, r["n"])
        assert r["moved"] > 0.2, (case, r["moved"])  # bounded-confidence updates happened
        assert r["follow_rows_changed"] > 10 and r["followers_changed"] > 10, case
        assert r["stance_var_steps"] > 5, case  # the float reductions change from step to step
    busy = out["busy"]
    assert busy["active_cap"] >= busy["n_users"] and busy["spec4"]["active"][:1] == ["agents"]
    for case in ("misinformation", "polarization", "herd_effect"):
        assert out[case]["active_cap"] < out[case]["n_users"] and out[case]["spec4"]["active"] == []
    assert out["misinformation"]["extra"]["cascade_size__rumor"] > 100
    herd = out["herd_effect"]["extra"]
    assert herd["likes__up"] > herd["likes__neutral"] > 0 and herd["dislikes__down"] > 0


def test_exact_sum_is_order_free_and_accurate():
    import jax.numpy as jnp
    import numpy as np

    from simcore.models.social.model import exact_sum

    rng = np.random.default_rng(0)
    for n, bound in ((3, 1.0), (5000, 1.0), (300_001, 16.0)):
        x = (rng.uniform(-1, 1, n) * bound).astype(np.float32)
        x[:2] = bound, -bound  # extremes: no digit column may overflow
        a = np.asarray(exact_sum(jnp.asarray(x), bound))
        b = np.asarray(exact_sum(jnp.asarray(rng.permutation(x)), bound))
        c = np.asarray(exact_sum(jnp.asarray(x.reshape(-1, 1)[::-1]), bound))
        assert a.tobytes() == b.tobytes() == c.tobytes(), n
        ref = np.sum(x.astype(np.float64))
        # each term rounded to 2^-30 x 2^ceil(log2 bound), then float32 combination
        assert abs(float(a) - ref) <= n * bound * 2.0**-31 + 4 * np.finfo(np.float32).eps * abs(ref) + 1e-12, n
    full = np.full(1_000_000, 1.0, np.float32)  # 2^30 per term x 10^6 terms: far past int32
    assert float(exact_sum(jnp.asarray(full), 1.0)) == 1_000_000.0
    assert float(exact_sum(jnp.asarray(-full), 1.0)) == -1_000_000.0
