"""A new local rule, registered at import: Oja-style Hebbian learning with a learned rate.

    S <- alpha S + eta_h beta (k v^T - S v v^T)        (per head h; eta_h in theta, init 0.5)

The Hebbian write k v^T is balanced by Oja's forgetting term S v v^T, which keeps S bounded
without the delta rule's read-out. `python examples/custom_rule.py` trains a small model
with it through sleep for a few steps and prints the loss and the learned rates; the usual
outer loop trains it from a config:

    python -m experiments.train --config=experiments/configs/recall.py:tiny \
        --config.rule=oja --config.rule_module=examples.custom_rule --workdir=/tmp/oja
"""

import jax
import jax.numpy as jnp

import sleep_consolidation as sc


def oja(S, k, v, alpha, beta, theta):
    """One token: S [H, d_k, d_v], k [H, d_k], v [H, d_v], alpha/beta [H], theta {"lr": [H]}."""
    rate = (theta["lr"] * beta)[:, None, None]
    forget = jnp.einsum("hkv,hv->hk", S, v)[:, :, None] * v[:, None, :]  # S v v^T
    return alpha[:, None, None] * S + rate * (k[:, :, None] * v[:, None, :] - forget)


def init_theta(key, num_heads, d_k, d_v):
    return {"lr": jnp.full((num_heads,), 0.5, jnp.float32)}


sc.register_rule("oja", oja, init_theta, overwrite=True)  # overwrite: safe to re-import


def main(steps: int = 40) -> None:
    """Trains a 2-block model with the rule through 2 passes of sleep on a small recall task
    and prints the loss and each head's learned rate."""
    import optax

    from sleep_consolidation.tasks import make_task

    task = make_task("recall", num_pairs_values=(2,), num_keys=4, num_values=4, window=4,
                     num_queries=2)  # fmt: skip
    cfg = sc.ModelConfig(vocab_size=task.vocab_size, d_model=16, num_heads=2,
                         layout=("attn", "ssm"), rule="oja")  # fmt: skip
    params = jax.jit(sc.init_params, static_argnums=0)(cfg, jax.random.key(0))
    tx = optax.adam(1e-2)

    def loss_fn(p, batch):
        logits = sc.forward(p, batch.tokens, window=task.window, passes=2)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets)
        return jnp.sum(nll * batch.loss_mask) / jnp.sum(batch.loss_mask)

    @jax.jit
    def step(p, opt, batch):
        loss, g = jax.value_and_grad(loss_fn)(p, batch)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    rate = lambda p: [round(float(x), 3) for x in p.blocks[1]["mixer"]["theta"]["lr"]]  # noqa: E731
    print(f"oja rule, 2 passes, recall of 2 pairs after eviction; rates at init {rate(params)}")
    opt = tx.init(params)
    for i in range(steps):
        params, opt, loss = step(params, opt, task.batch(0, i, 32))
        if i in (0, steps - 1) or (i + 1) % 10 == 0:
            print(f"step {i + 1:3d}  loss {float(loss):.3f}", flush=True)
    print(f"learned per-head rates (theta['lr']): {rate(params)}")


if __name__ == "__main__":
    main()
