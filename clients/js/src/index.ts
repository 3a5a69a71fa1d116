export { connect, RoomcastClient, type ConnectOptions } from "./client.js";
export { Room, Presence, Typing } from "./room.js";
export {
  RoomcastError,
  GATEWAY_ERROR_CODES,
  CLIENT_ERROR_CODES,
  isErrorCode,
  type ErrorCode,
  type GatewayErrorCode,
  type ClientErrorCode,
  type BackendError,
} from "./errors.js";
export type {
  RoomSpec,
  Position,
  EventMeta,
  JoinResult,
  Resync,
  Status,
  PresenceUser,
  Occupancy,
  PublishReceipt,
  HistoryPage,
  ConnectionState,
  EventMap,
} from "./types.js";
