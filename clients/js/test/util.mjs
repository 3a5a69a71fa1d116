// Helpers of these tests only (the gateway, Redis and tokens come from js-tests/helpers.mjs).
import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { eventually } from "../../../js-tests/helpers.mjs";

/** Debian's Chromium, or ROOMCAST_CHROMIUM. */
const CHROMIUM = process.env.ROOMCAST_CHROMIUM ?? "/usr/bin/chromium";

/** Where the browser tests save their screenshots. */
export const RESULTS = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "test-results");

/** Why the browser tests are skipped (no Chromium), or false. */
export const noBrowser = existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (Debian: apt-get install chromium)`;

/** Headless Chromium, driven by playwright-core (which downloads no browser of its own). */
export async function launchChromium() {
  mkdirSync(RESULTS, { recursive: true });
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
  });
}

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
