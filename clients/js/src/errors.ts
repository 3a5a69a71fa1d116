/**
 * Every code the gateway sends to clients (README "Error codes"; a test keeps this list and that
 * table equal). Codes are never renamed, so switching on them is safe.
 */
export const GATEWAY_ERROR_CODES = [
  "token_missing",
  "token_invalid",
  "token_expired",
  "forbidden",
  "invalid_room",
  "too_many_rooms",
  "invalid_payload",
  "unknown_event",
  "rate_limited",
  "server_shutdown",
  "not_found",
  "unauthorized",
  "method_not_allowed",
  "invalid_event",
  "payload_too_large",
  "unavailable",
  "headers_too_large",
  "timeout",
  "too_many_connections",
  "disconnected",
  "token_revoked",
  "too_many_revocations",
  "rpc_timeout",
  "rpc_unavailable",
  "rpc_rejected",
] as const;

/**
 * Codes this library adds for what happens on the client's side:
 * - `ack_timeout`: the gateway did not answer within `ackTimeoutMs` (the operation may or may
 *   not have been applied);
 * - `connection_lost`: not connected when called, or the connection dropped before the answer
 *   (the operation may or may not have been applied; rooms are rejoined by themselves);
 * - `closed`: the client was closed (`client.close()`) before the operation was answered;
 * - `connect_failed`: the gateway kept refusing fresh tokens, or refused the connection with a
 *   code no retry fixes; the client stays `closed` until `client.reconnect()`;
 * - `get_token_failed`: the `getToken` callback threw or rejected (it is called again, backing
 *   off); see `RoomcastError.cause`;
 * - `listener_failed`: one of the application's listeners threw (the others still ran);
 * - `not_a_channel`: typing or publishing in a project room (only channels have them).
 */
export const CLIENT_ERROR_CODES = [
  "ack_timeout",
  "connection_lost",
  "closed",
  "connect_failed",
  "get_token_failed",
  "listener_failed",
  "not_a_channel",
] as const;

export type GatewayErrorCode = (typeof GATEWAY_ERROR_CODES)[number];
export type ClientErrorCode = (typeof CLIENT_ERROR_CODES)[number];
export type ErrorCode = GatewayErrorCode | ClientErrorCode;

/** What a backend said when it refused an RPC or a client publish (`rpc_rejected`). */
export interface BackendError {
  code: string;
  message?: string;
  data?: unknown;
}

/** An error with a code from the gateway's table or this library's own few. */
export class RoomcastError extends Error {
  readonly code: ErrorCode;
  /** With `rate_limited`: when to retry. */
  readonly retryAfterMs?: number;
  /** With `rpc_rejected`: the backend's own error. */
  readonly backend?: BackendError;

  constructor(code: ErrorCode, message: string, extra: { retryAfterMs?: number; backend?: BackendError; cause?: unknown } = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = "RoomcastError";
    this.code = code;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
    if (extra.backend !== undefined) this.backend = extra.backend;
  }
}

const KNOWN = new Set<string>([...GATEWAY_ERROR_CODES, ...CLIENT_ERROR_CODES]);

/** Whether `code` is one of the codes above (a newer gateway may add codes). */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === "string" && KNOWN.has(code);
}

/**
 * The error of a refused ack (`{ ok: false, error: { code, message, … } }`). An unknown code (a
 * newer gateway) is kept as is: the type says `ErrorCode`, and `isErrorCode` tells them apart.
 */
export function fromAckError(error: unknown): RoomcastError {
  const e = (typeof error === "object" && error !== null ? error : {}) as Record<string, unknown>;
  const code = typeof e.code === "string" ? e.code : "invalid_payload";
  const message = typeof e.message === "string" ? e.message : code;
  return new RoomcastError(code as ErrorCode, message, {
    retryAfterMs: typeof e.retryAfterMs === "number" ? e.retryAfterMs : undefined,
    backend: typeof e.backend === "object" && e.backend !== null ? (e.backend as BackendError) : undefined,
  });
}
