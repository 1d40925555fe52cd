"""Layer table of a compiled model: output shapes, parameter counts, forward FLOPs per sample."""


def summarize(model):
    rows = []
    for l in model.layers:
        rows.append({
            "name": l.name,
            "type": l.spec.type,
            "inputs": list(l.input_names),
            "output_shape": list(l.out_shape),
            "params": int(sum(p.size for p in l.params.values())),
            "flops": int(l.flops()),
        })
    return {
        "name": model.name,
        "input_shape": list(model.input_shape),
        "dtype": str(model.dtype),
        "loss": model.spec.loss,
        "layers": rows,
        "total_params": sum(r["params"] for r in rows),
        "total_flops": sum(r["flops"] for r in rows),
    }


def _human(n):
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_summary(s):
    header = ("layer", "type", "output shape", "params", "FLOPs")
    body = [(r["name"], r["type"], "x".join(map(str, r["output_shape"])), f"{r['params']:,}", _human(r["flops"]))
            for r in s["layers"]]
    body.insert(0, ("input", "", "x".join(map(str, s["input_shape"])), "", ""))
    total = ("total", "", "", f"{s['total_params']:,}", _human(s["total_flops"]))
    widths = [max(len(str(row[i])) for row in [header, total] + body) for i in range(5)]
    align = ["<", "<", "<", ">", ">"]

    def line(row):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths)).rstrip()

    rule = "-" * len(line(header))
    out = [f"{s['name']}  (loss: {s['loss']}, dtype: {s['dtype']}, FLOPs per sample, forward)",
           line(header), rule] + [line(r) for r in body] + [rule, line(total)]
    return "\n".join(out)
