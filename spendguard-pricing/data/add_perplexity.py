#!/usr/bin/env python3
"""Adds Perplexity's Sonar models to prices.json (issue 16, item 4).

Usage: add_perplexity.py LITELLM.json < prices.json > prices.new.json
  LITELLM: litellm/model_prices_and_context_window_backup.json from the litellm wheel on PyPI
           (1.109.1 on 2026-12-07, the release the rest of the table comes from).
Keys: `perplexity/<model>` for litellm's `perplexity` chat models sonar, sonar-pro,
sonar-reasoning, sonar-reasoning-pro and sonar-deep-research (provider-qualified: found first by
PriceTable::lookup_for for requests to api.perplexity.ai, as clients name them `sonar`...).
Token prices come from regenerate.py's `entry`. Beyond tokens:
  * request_fee {low, medium, high}: litellm's `search_context_cost_per_query`
    {search_context_size_low/medium/high}, dollars per request; they match Perplexity's pricing page
    (docs.perplexity.ai/getting-started/pricing: $5/$8/$12 per 1K requests for Sonar, $6/$10/$14
    for Sonar Pro and Sonar Reasoning Pro).
  * sonar-deep-research has no request fee on Perplexity's page but bills citation tokens ($2/M:
    `citation_cost_per_token`), reasoning tokens ($3/M: `output_cost_per_reasoning_token`) and $5
    per 1K search queries; litellm stores the last as `search_context_cost_per_query` with three
    equal 0.005 values, written here as `search_query` (dollars per query).
"""
import json, sys, importlib.util, os
from decimal import Decimal

spec = importlib.util.spec_from_file_location("regen", os.path.join(os.path.dirname(__file__), "regenerate.py"))
src = open(spec.origin).read().replace("\nmain()\n", "\n")
regen = {}
exec(compile(src, spec.origin, "exec"), regen)
entry, per_mtok = regen["entry"], regen["per_mtok"]

def usd(v):
    """Dollars as an exact decimal string (per request or per query)."""
    s = format(Decimal(repr(float(v))).normalize(), "f")
    return s if "." in s else s + ".00"

MODELS = ["sonar", "sonar-pro", "sonar-reasoning", "sonar-reasoning-pro", "sonar-deep-research"]
lite = json.load(open(sys.argv[1]))
table = json.load(sys.stdin)
for m in MODELS:
    v = lite["perplexity/" + m]
    e = entry(v)
    fees = v["search_context_cost_per_query"]
    if v.get("citation_cost_per_token") is not None:
        e["citation"] = per_mtok(v["citation_cost_per_token"])
        e["reasoning"] = per_mtok(v["output_cost_per_reasoning_token"])
        assert len(set(fees.values())) == 1, m
        e["search_query"] = usd(fees["search_context_size_low"])
    else:
        e["request_fee"] = {
            "low": usd(fees["search_context_size_low"]),
            "medium": usd(fees["search_context_size_medium"]),
            "high": usd(fees["search_context_size_high"]),
        }
    table["models"]["perplexity/" + m] = e
table["models"] = dict(sorted(table["models"].items()))
table["notes"].append(
    "Perplexity Sonar models (perplexity/<model>) from the same litellm 1.109.1 list, added 2026-12-07 by add_perplexity.py: request_fee = dollars per request by search context size; sonar-deep-research's citation / reasoning (per million tokens) and search_query (dollars per query)."
)
json.dump(table, sys.stdout, indent=1)
print()
