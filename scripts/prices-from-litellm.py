#!/usr/bin/env python3
"""Adds models to spendguard-pricing/data/prices.json from litellm's price list (the table's named
source): litellm's model_prices_and_context_window json, as shipped in the litellm wheel on PyPI.

    python3 scripts/prices-from-litellm.py LITELLM_JSON PREFIX_IN_TABLE LITELLM_KEY_REGEX [PROVIDERS]

Every litellm entry whose key matches the regex (and whose litellm_provider is in the
comma-separated PROVIDERS, if given) and whose mode is chat/completion/embedding is written as
"PREFIX_IN_TABLE + key" (a prefix such as "bedrock/" keeps provider-specific names apart).
Existing entries are kept. Prices become exact decimal strings (USD per million tokens).
"""
import json
import re
import sys
from decimal import Decimal

TABLE = "spendguard-pricing/data/prices.json"


def mtok(v):
    d = (Decimal(repr(v)) * 1_000_000).quantize(Decimal("0.000001"))
    s = format(d.normalize(), "f")
    if "." not in s:
        s += ".00"
    elif len(s.split(".")[1]) == 1:
        s += "0"
    return s


def entry(v):
    if v.get("input_cost_per_token") is None or v.get("output_cost_per_token") is None:
        return None
    e = {"input": mtok(v["input_cost_per_token"])}
    if v.get("cache_read_input_token_cost") is not None:
        e["cached_input"] = mtok(v["cache_read_input_token_cost"])
    if v.get("cache_creation_input_token_cost") is not None:
        e["cache_write"] = mtok(v["cache_creation_input_token_cost"])
    if v.get("cache_creation_input_token_cost_above_1hr") is not None:
        e["cache_write_1h"] = mtok(v["cache_creation_input_token_cost_above_1hr"])
    e["output"] = mtok(v["output_cost_per_token"])
    embedding = v.get("mode") == "embedding"
    e["max_output_tokens"] = 0 if embedding else int(v.get("max_output_tokens") or v.get("max_tokens") or 0)
    e["context_window"] = int(v.get("max_input_tokens") or v.get("max_tokens") or 0)
    if not embedding and (e["max_output_tokens"] <= 0 or e["context_window"] <= 0):
        return None
    if v.get("input_cost_per_token_above_200k_tokens") is not None:
        lc = {"above_input_tokens": 200000, "input": mtok(v["input_cost_per_token_above_200k_tokens"])}
        if v.get("cache_read_input_token_cost_above_200k_tokens") is not None:
            lc["cached_input"] = mtok(v["cache_read_input_token_cost_above_200k_tokens"])
        if v.get("cache_creation_input_token_cost_above_200k_tokens") is not None:
            lc["cache_write"] = mtok(v["cache_creation_input_token_cost_above_200k_tokens"])
        if v.get("cache_creation_input_token_cost_above_1hr_above_200k_tokens") is not None:
            lc["cache_write_1h"] = mtok(v["cache_creation_input_token_cost_above_1hr_above_200k_tokens"])
        lc["output"] = mtok(v.get("output_cost_per_token_above_200k_tokens", v["output_cost_per_token"]))
        e["long_context"] = lc
    return e


def main():
    src, prefix, pattern = sys.argv[1], sys.argv[2], re.compile(sys.argv[3])
    providers = set(sys.argv[4].split(",")) if len(sys.argv) > 4 else None
    data = json.load(open(src))
    table = json.load(open(TABLE))
    added = 0
    for key, v in sorted(data.items()):
        if not pattern.fullmatch(key):
            continue
        if providers and v.get("litellm_provider") not in providers:
            continue
        if v.get("mode") not in ("chat", "completion", "embedding"):
            continue
        e = entry(v)
        name = prefix + key
        if e is None or name in table["models"]:
            continue
        table["models"][name] = e
        added += 1
    table["models"] = dict(sorted(table["models"].items()))
    with open(TABLE, "w") as f:
        json.dump(table, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"added {added} models", file=sys.stderr)


if __name__ == "__main__":
    main()
