/*
 * log.h - logging for every role.
 *
 * Outside systemd: one line per event on stderr, as text ("iotd[pid]
 * worker 1: info: ...") or JSON ({"ts":..,"level":..,"role":..,
 * "worker":..,"msg":..}). Under systemd (stderr is the journal stream
 * named by JOURNAL_STREAM): one journal entry per event with PRIORITY=,
 * ROLE=, WORKER=, CLIENT_ID= and REMOTE= fields; if the journal refuses
 * an entry it goes to stderr as text with an sd-daemon "<N>" prefix.
 * Context fields (client id, remote address) are passed explicitly with
 * log_client().
 */
#ifndef IOTD_LOG_H
#define IOTD_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdnoreturn.h>

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };
enum log_format { LOG_FMT_TEXT, LOG_FMT_JSON };

/* Set once at startup and again in each child after fork. worker < 0: none. */
void log_init(enum log_level level, enum log_format format);
void log_set_role(const char *role, int worker);
void log_set_level(enum log_level level);
void log_set_format(enum log_format format);
enum log_level log_get_level(void);
/*
 * Connect to the journal now, so that logging keeps working after a
 * chroot and under a seccomp filter that forbids socket(2). A no-op when
 * not logging to the journal. Returns 0, or -1 (logged) when entries
 * will go to stderr instead.
 */
int log_journal_pin(void);

/* The settings a reload changes at once: sent from the supervisor to each child. */
struct log_settings {
	uint32_t level;              /* enum log_level */
	uint32_t format;             /* enum log_format */
};
void log_get_settings(struct log_settings *s);
/* Apply a struct log_settings received as a message payload; -1 if malformed. */
int log_apply_settings(const void *payload, size_t len);
/* Parse "error"/"warn"/"info"/"debug" and "text"/"json"; -1 when unknown. */
int log_level_parse(const char *s);
int log_format_parse(const char *s);

void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A line about one client: the client id and remote address become fields. */
void log_client(enum log_level level, const char *client_id, const char *remote,
		const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/*
 * The one line of a refused CONNECT, at warn, the same from the auth role
 * and from a worker, for fail2ban and the like to match:
 *   refused REMOTE=<address, no port> USER="<name>" CONNACK=<code> (<why>)
 * The address comes before anything the client chose. Never a password.
 */
void log_auth_refusal(const char *client_id, size_t client_id_len, const char *remote,
		      const char *user, size_t user_len, unsigned code, const char *why);
/* Log at error level and exit(1): for broken invariants and startup failures. */
noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
