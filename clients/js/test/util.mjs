// Helpers of these tests only (the gateway, Redis and tokens come from js-tests/helpers.mjs).
import { eventually } from "../../../js-tests/helpers.mjs";

/** `eventually(check)`, where a check refused as `rate_limited` waits as the gateway asks. */
export function eventuallyPolitely(check, what, ms) {
  return eventually(async () => {
    try {
      return await check();
    } catch (e) {
      if (e?.code !== "rate_limited") throw e;
      await new Promise((r) => setTimeout(r, e.retryAfterMs ?? 200));
      return false;
    }
  }, what, ms);
}
