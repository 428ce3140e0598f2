/** membarrier(2) commands (linux/membarrier.h). */

/**
 * Commands. A process's registrations, as `GET_REGISTRATIONS` answers them, are a mask of the
 * `REGISTER_*` commands it ran: each bit is the command that registers it again.
 */
export const MEMBARRIER_CMD = {
  QUERY: 0,
  GLOBAL: 1 << 0,
  GLOBAL_EXPEDITED: 1 << 1,
  REGISTER_GLOBAL_EXPEDITED: 1 << 2,
  PRIVATE_EXPEDITED: 1 << 3,
  REGISTER_PRIVATE_EXPEDITED: 1 << 4,
  PRIVATE_EXPEDITED_SYNC_CORE: 1 << 5,
  REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: 1 << 6,
  PRIVATE_EXPEDITED_RSEQ: 1 << 7,
  REGISTER_PRIVATE_EXPEDITED_RSEQ: 1 << 8,
  GET_REGISTRATIONS: 1 << 9,
} as const;
