#!/usr/bin/env python3
"""Adds OpenAI Realtime models to prices.json (issue 16, item 5).

Usage: add_realtime.py LITELLM.json < prices.json > prices.new.json
  LITELLM: litellm/model_prices_and_context_window_backup.json from the litellm wheel on PyPI
           (1.109.1 on 2026-12-07, the release the rest of the table comes from).
Keys: litellm's `openai` entries whose name contains `realtime` and that carry audio token
prices (`gpt-realtime`, `gpt-realtime-mini`, dated snapshots priced apart...). Text prices come
from regenerate.py's `entry`; `audio` = {input: input_cost_per_audio_token, cached_input:
cache_read_input_audio_token_cost (litellm spells it cache_creation_input_audio_token_cost for
some models: the price OpenAI lists as "cached audio input"), output: output_cost_per_audio_token};
`image` = {input: input_cost_per_image_token, cached_input: cache_read_input_image_token_cost}.
Per-second models (gpt-realtime-whisper, -translate) have no token prices and are left out:
the session meter refuses them as unknown.
"""
import json, sys, importlib.util, os

spec = importlib.util.spec_from_file_location("regen", os.path.join(os.path.dirname(__file__), "regenerate.py"))
src = open(spec.origin).read().replace("\nmain()\n", "\n")
regen = {}
exec(compile(src, spec.origin, "exec"), regen)
entry, per_mtok = regen["entry"], regen["per_mtok"]

lite = json.load(open(sys.argv[1]))
table = json.load(sys.stdin)
added = 0
for k, v in lite.items():
    if v.get("litellm_provider") != "openai" or "realtime" not in k:
        continue
    if v.get("input_cost_per_audio_token") is None or v.get("output_cost_per_audio_token") is None:
        continue
    e = entry(v)
    if e is None:
        continue
    audio = {"input": per_mtok(v["input_cost_per_audio_token"])}
    cached = v.get("cache_read_input_audio_token_cost", v.get("cache_creation_input_audio_token_cost"))
    if cached is not None:
        audio["cached_input"] = per_mtok(cached)
    audio["output"] = per_mtok(v["output_cost_per_audio_token"])
    e["audio"] = audio
    if v.get("input_cost_per_image_token") is not None:
        image = {"input": per_mtok(v["input_cost_per_image_token"])}
        if v.get("cache_read_input_image_token_cost") is not None:
            image["cached_input"] = per_mtok(v["cache_read_input_image_token_cost"])
        e["image"] = image
    if k in table["models"] and table["models"][k] != e:
        print(f"replacing {k}", file=sys.stderr)
    table["models"][k] = e
    added += 1
table["models"] = dict(sorted(table["models"].items()))
table["notes"].append(
    "OpenAI Realtime models (audio and image token prices in `audio` / `image`) from the same litellm 1.109.1 list, added 2026-12-07 by add_realtime.py; per-second models left out."
)
json.dump(table, sys.stdout, indent=1)
print()
print(f"{added} models added", file=sys.stderr)
