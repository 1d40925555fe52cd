"""Seed 1: a 2-2-2 sigmoid net with given weights learns one sample by plain gradient descent.

Trains specs/forward_example.yaml (MSE, SGD lr 0.1, 3,000 steps), printing the
prediction and the loss every 150 steps as the seed did, and saves the loss curve.
The run is deterministic: the prediction ends within 1e-3 of the target [0.2, 0.1].
"""
from _shared import parse_args, pyplot, saved, spec_path  # before numpy: sets BLAS threads

import numpy as np

import netspec
from netspec.runner import trainer_for

args = parse_args(__doc__)
spec = netspec.load_spec(spec_path("forward_example"))
data = spec.train.data
x, target = np.array(data.x, dtype=float), np.array(data.t, dtype=float)
steps = spec.train.steps  # 3,000: cheap enough that --quick runs it whole

trainer = trainer_for(spec, save=False, quiet=True)
model = trainer.model
print(f"x = {x[0].tolist()}, target = {target[0].tolist()}")
print(f"step     0: prediction {model.predict(x)[0].round(6).tolist()}, loss {model.loss(x, target):.8f}")
losses = []
while trainer.step < steps:
    losses.append(trainer.train_step(trainer.sampler.next()))  # loss before this step's update
    if trainer.step % spec.train.steps_per_epoch == 0:
        y = model.predict(x)[0]
        print(f"step {trainer.step:5d}: prediction {y.round(6).tolist()}, loss {model.loss(x, target):.8f}")

y = model.predict(x)[0]
err = float(np.abs(y - target[0]).max())
print(f"final prediction {y.round(6).tolist()} vs target {target[0].tolist()}: "
      f"max |error| = {err:.2e} ({'within' if err <= 1e-3 else 'NOT within'} 1e-3)")

plt = pyplot("the loss curve")
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(losses) + 1), losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss")
    ax.set_title("forward_example: 2-2-2 sigmoid net, SGD lr 0.1")
    saved(plt, fig, args.out / "forward_example_loss.png")
