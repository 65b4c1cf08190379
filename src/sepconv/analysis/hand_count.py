"""The classic hand calculations: MobileNetV1's 14-layer body at a given input size, standard
against depthwise-separable convolutions, and the per-layer-kind breakdown of Table 2."""

from __future__ import annotations

from ..models.mobilenet import MOBILENET_V1_TABLE


def mobilenet_hand_count(input_size: int = 160, kernel: int = 3) -> dict:
    """MACs of MobileNetV1's body (first standard 3x3 conv, 3 -> 32, stride 2, then the 13
    separable layers), each layer's output size ``round((size - 2) / stride)``:

        standard layer:  out^2 * k^2 * C_in * C_out
        separable layer: out^2 * (k^2 * C_in + C_in * C_out)   (the first layer stays standard)

    At input 160 this gives 1,045,417,824 against 126,373,376 MACs, ratio 0.1209.
    """
    layers = [(3, 32, 2)]
    cin = 32
    for cout, stride in MOBILENET_V1_TABLE:
        layers.append((cin, cout, stride))
        cin = cout
    size, rows, std_total, sep_total = input_size, [], 0, 0
    for i, (ci, co, s) in enumerate(layers):
        out = round((size - 2) / s)
        std = out * out * kernel * kernel * ci * co
        sep = std if i == 0 else out * out * (kernel * kernel * ci + ci * co)
        rows.append({"layer": i, "in": size, "out": out, "c_in": ci, "c_out": co, "stride": s,
                     "standard_macs": std, "separable_macs": sep})
        std_total += std
        sep_total += sep
        size = out
    return {"input": input_size, "rows": rows, "standard_macs": std_total,
            "separable_macs": sep_total, "ratio": sep_total / std_total}


def mobilenet_table2(report) -> dict:
    """Share of MACs and parameters per layer kind (MobileNet paper, Table 2), from a counted
    :class:`~sepconv.analysis.CostReport`. Shares are of the counted conv + FC totals."""
    macs = sum(k.macs for k in report.kinds.values())
    params = sum(k.params for k in report.kinds.values())
    return {name: {"macs": k.macs, "mac_share": k.macs / macs if macs else 0.0,
                   "params": k.params, "param_share": k.params / params if params else 0.0}
            for name, k in sorted(report.kinds.items(), key=lambda kv: -kv[1].macs)}
