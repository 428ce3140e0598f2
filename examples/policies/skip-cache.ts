/**
 * A policy that leaves a cache out of the image: private anonymous mappings of at least
 * `TARDIGRADE_CACHE_MIN` bytes (default 64 MiB), or named `[anon:cache]` (prctl PR_SET_VMA
 * names), are not dumped. They come back mapped but zero-filled, so the program must treat the
 * cache as empty after a restore. Heap and stack are always dumped.
 *
 *     tardigrade dump PID DIR --policy examples/policies/skip-cache.ts
 */
import type { Policy } from "../../mod.ts";

const min = Number(Deno.env.get("TARDIGRADE_CACHE_MIN") ?? 64 * 1024 * 1024);

const policy: Policy = {
  mapping(m) {
    if (m.kind !== "anonymous") return "dump";
    return m.size >= min || m.path === "[anon:cache]" ? "skip" : "dump";
  },
};

export default policy;
