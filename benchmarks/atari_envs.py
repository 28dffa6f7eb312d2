"""Atari environment throughput: ale-py's vectorised environment against envpool, same settings.

Pong, 8 environments, 2 threads, the standard preprocessing of both (frame skip 4, 84×84 grey,
4 stacked frames), random actions; best of 3 × 300 steps. envpool is optional (not in the lock):
``pip install envpool`` to include it. Usage: ``python benchmarks/atari_envs.py``.
"""

from __future__ import annotations

import time

import numpy as np

ENVS, THREADS, STEPS, REPEATS = 8, 2, 300, 3


def _ale():
    from ale_py.vector_env import AtariVectorEnv

    return AtariVectorEnv("pong", ENVS, num_threads=THREADS, reward_clipping=False)


def _envpool():
    import envpool

    return envpool.make("Pong-v5", env_type="gymnasium", num_envs=ENVS, batch_size=ENVS, num_threads=THREADS,
                        reward_clip=False)


def throughput(make) -> float:
    """Environment steps per second (each step is 4 emulator frames)."""
    env = make()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    best = np.inf
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(STEPS):
            env.step(rng.integers(0, 6, ENVS))
        best = min(best, time.perf_counter() - start)
    env.close()
    return ENVS * STEPS / best


def main() -> None:
    base = throughput(_ale)
    print(f"ale-py AtariVectorEnv: {base:,.0f} environment steps/s ({ENVS} envs, {THREADS} threads)")
    try:
        other = throughput(_envpool)
    except ImportError:
        print("envpool: not installed (pip install envpool)")
        return
    print(f"envpool:               {other:,.0f} environment steps/s ({other / base:.2f}x ale-py)")


if __name__ == "__main__":
    main()
