/*
 * iotd.h - project-wide constants and small helpers shared by every role.
 *
 * Owns nothing at run time: version, role names, hard limits that size
 * wire formats, and the conn-id packing used by workers and the router.
 */
#ifndef IOTD_H
#define IOTD_H

#include <stddef.h>
#include <stdint.h>

#define IOTD_VERSION "0.1.0"

#define IOTD_MAX_WORKERS 64          /* conn ids keep 8 bits for the worker */
#define IOTD_DEFAULT_PORT 1883
#define IOTD_DEFAULT_CONFIG "/etc/iotd/iotd.conf"

enum iotd_role {
	ROLE_SUPERVISOR,
	ROLE_LISTENER,
	ROLE_ROUTER,
	ROLE_WORKER,
	ROLE_AUTH,
	ROLE_KEYS,
	ROLE_MAX
};

/*
 * A connection id names one client connection for its whole life, across
 * the worker -> router -> worker round trip. The worker's epoch changes at
 * each restart of that worker, and a slot's serial at each reuse of the
 * slot. Ids do come back: a worker reuses the slot freed last first, and a
 * slot's 16-bit serial wraps after 65,536 connections in it. So a record
 * about a connection that has closed finds no connection, or, only after
 * 65,536 later connections in the same slot of the same worker process,
 * another one: each side checks the whole id, never the slot alone.
 *
 *   63      56 55            40 39                  16 15        0
 *   | worker  |     epoch      |        slot          |  serial   |
 */
typedef uint64_t conn_id_t;

static inline conn_id_t conn_id_make(unsigned worker, unsigned epoch,
				     unsigned slot, unsigned serial)
{
	return ((uint64_t)(worker & 0xff) << 56) |
	       ((uint64_t)(epoch & 0xffff) << 40) |
	       ((uint64_t)(slot & 0xffffff) << 16) | (serial & 0xffff);
}
static inline unsigned conn_id_worker(conn_id_t id) { return (unsigned)(id >> 56); }
static inline unsigned conn_id_epoch(conn_id_t id) { return (unsigned)(id >> 40) & 0xffff; }
static inline unsigned conn_id_slot(conn_id_t id) { return (unsigned)(id >> 16) & 0xffffff; }
static inline unsigned conn_id_serial(conn_id_t id) { return (unsigned)id & 0xffff; }

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
