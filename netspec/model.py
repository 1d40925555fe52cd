"""A compiled model: named layers in topological order, a loss, parameters keyed "layer.param".

Design: the model is a small DAG. Each layer reads the outputs of its
``input_names`` ('input' is the network input); forward runs layers in file
order, backward runs them in reverse and sums the gradients of outputs that
feed several layers. The last layer's output is the model's output.
"""
import numpy as np

from .layers import MultiInputLayer


class Model:
    def __init__(self, spec, layers, loss, dtype, rng):
        self.spec = spec
        self.name = spec.name
        self.layers = layers
        self.loss_fn = loss
        self.dtype = np.dtype(dtype)
        self.input_shape = tuple(spec.input.shape)
        self.output_shape = layers[-1].out_shape
        self.set_rng(rng)

    # -- parameters -----------------------------------------------------------
    @property
    def params(self):
        """{"<layer>.<param>": array}; the arrays are the layers' own, updated in place."""
        return {f"{l.name}.{k}": v for l in self.layers for k, v in l.params.items()}

    @property
    def grads(self):
        return {f"{l.name}.{k}": v for l in self.layers for k, v in l.grads.items()}

    @property
    def buffers(self):
        """Non-learned state (batchnorm running statistics), keyed like params."""
        return {f"{l.name}.{k}": v for l in self.layers if hasattr(l, "buffers")
                for k, v in l.buffers().items()}

    def set_rng(self, rng):
        """Generator for layers that draw random numbers (dropout)."""
        self.rng = rng
        for l in self.layers:
            l.set_rng(rng)

    def load_arrays(self, arrays):
        """Copy params and buffers from a {"layer.param": array} mapping, checking names and shapes."""
        own = {**self.params, **self.buffers}
        missing = sorted(set(own) - set(arrays))
        extra = sorted(set(arrays) - set(own))
        if missing or extra:
            raise ValueError(f"parameter names do not match the model (missing {missing}, unexpected {extra})")
        for k, dst in own.items():
            src = np.asarray(arrays[k])
            if src.shape != dst.shape:
                raise ValueError(f"parameter {k} is shaped {list(src.shape)}, the model expects {list(dst.shape)}")
            np.copyto(dst, src, casting="unsafe")

    # -- running ----------------------------------------------------------------
    def _as_input(self, x):
        x = np.asarray(x, dtype=self.dtype)
        if x.shape[1:] != self.input_shape:
            if x.shape == self.input_shape:
                x = x[None]
            elif x.ndim >= 1 and int(np.prod(x.shape[1:])) == int(np.prod(self.input_shape)):
                x = x.reshape((x.shape[0],) + self.input_shape)
            else:
                raise ValueError(f"input shaped {list(x.shape)} does not fit the model input "
                                 f"{list(self.input_shape)} (batch axis first)")
        return x

    def forward(self, x, train=False):
        """Output of the last layer for a batch x (N, *input_shape)."""
        outs = {"input": self._as_input(x)}
        out = None
        for l in self.layers:
            if isinstance(l, MultiInputLayer):
                out = l.forward([outs[n] for n in l.input_names], train)
            else:
                out = l.forward(outs[l.input_names[0]], train)
            outs[l.name] = out
        return out

    def backward(self, dout, need_input_grad=True):
        """Back-propagate d(loss)/d(output); fills every layer's grads, returns d/d(input).

        With ``need_input_grad=False`` (training), layers fed only by the network input
        skip their input gradient, and None is returned.
        """
        pending = {self.layers[-1].name: dout}
        dx_input = None
        for l in reversed(self.layers):
            d = pending.pop(l.name)
            l.need_dx = need_input_grad or any(n != "input" for n in l.input_names)
            dxs = l.backward(d)
            if dxs is None:
                continue
            if not isinstance(l, MultiInputLayer):
                dxs = [dxs]
            for src, g in zip(l.input_names, dxs):
                if src == "input":
                    dx_input = g if dx_input is None else dx_input + g
                elif src in pending:
                    pending[src] = pending[src] + g  # new array: never write into a layer's result
                else:
                    pending[src] = g
        return dx_input

    def predict(self, x, batch_size=None):
        """Model output in test mode (dropout off, batchnorm running statistics)."""
        x = self._as_input(x)
        if batch_size is None or len(x) <= batch_size:
            return self.forward(x, train=False)
        return np.concatenate([self.forward(x[i:i + batch_size], train=False)
                               for i in range(0, len(x), batch_size)])

    def _targets(self, t):
        t = np.asarray(t)
        if not np.issubdtype(t.dtype, np.integer):
            t = t.astype(self.dtype, copy=False)
        return t

    def loss(self, x, t, train=False):
        """Scalar loss of a batch."""
        y = self.forward(x, train)
        t = self._targets(t)
        self.loss_fn.check_targets(y, t)
        return self.loss_fn.forward(y, t)

    def gradient(self, x, t):
        """Loss and back-propagation in train mode; returns {"layer.param": gradient}.

        The arrays belong to the layers and are overwritten by the next call.
        """
        self.last_loss = self.loss(x, t, train=True)
        self.backward(self.loss_fn.backward(), need_input_grad=False)
        return self.grads

    def accuracy(self, x, t, batch_size=1000):
        """Fraction of samples whose arg-max output equals the label (or the one-hot arg-max)."""
        t = np.asarray(t)
        labels = t if t.ndim == 1 else t.argmax(axis=1)
        correct = 0
        for i in range(0, len(labels), batch_size):
            y = self.predict(x[i:i + batch_size])
            correct += int((y.argmax(axis=1) == labels[i:i + batch_size]).sum())
        return correct / max(len(labels), 1)

    def evaluate(self, x, t, batch_size=1000):
        """(mean loss, accuracy or None) over a whole set, in test mode, in batches."""
        t = self._targets(t)
        total, correct, n = 0.0, 0, len(t)
        for i in range(0, n, batch_size):
            xb, tb = x[i:i + batch_size], t[i:i + batch_size]
            y = self.predict(xb)
            self.loss_fn.check_targets(y, tb)
            total += self.loss_fn.forward(y, tb) * len(tb)
            if self.loss_fn.classification:
                labels = tb if tb.ndim == 1 else tb.argmax(axis=1)
                correct += int((y.argmax(axis=1) == labels).sum())
        acc = correct / max(n, 1) if self.loss_fn.classification else None
        return total / max(n, 1), acc

    def graph(self):
        """The model as plain data (ops, shapes, attributes, named arrays), e.g. for export.

        Returns {"inputs", "nodes", "output", "loss", "dtype"}; each node names its op,
        inputs, attributes (the layer's spec fields), output shape (no batch axis) and
        the keys of its arrays in ``model.params`` / ``model.buffers``.
        """
        skip = {"type", "name", "inputs", "init", "bias_init"}
        nodes = []
        for l in self.layers:
            attrs = {k: v for k, v in l.spec.model_dump(mode="json").items() if k not in skip}
            if getattr(l, "stride", None) is not None and "stride" in attrs:
                attrs["stride"] = l.stride  # pooling's default stride, resolved
            nodes.append({
                "name": l.name, "op": l.spec.type, "inputs": list(l.input_names), "attrs": attrs,
                "output_shape": list(l.out_shape),
                "params": {k: f"{l.name}.{k}" for k in l.params},
                "buffers": {k: f"{l.name}.{k}" for k in (l.buffers() if hasattr(l, "buffers") else {})},
            })
        return {"inputs": [{"name": "input", "shape": list(self.input_shape)}], "nodes": nodes,
                "output": self.layers[-1].name, "loss": self.spec.loss, "dtype": str(self.dtype)}

    def __repr__(self):
        return f"<netspec.Model {self.name!r}: {len(self.layers)} layers, {self.dtype}>"
