/*
 * privsep.h - privilege separation of the children when iotd starts as
 * root (outside systemd, or under a unit without User=).
 *
 * The supervisor binds its sockets, maps its shared memory and resolves
 * the unprivileged user first (privsep_prepare), then forks. Each child
 * leaves root for that user before it runs its role (privsep_enter); the
 * listener and the workers, which need no file at all, are also shut in
 * an empty directory and under a seccomp allow-list. docs/arch.md
 * ("Privileges") lists what each role keeps.
 */
#ifndef IOTD_PRIVSEP_H
#define IOTD_PRIVSEP_H

#include <stdbool.h>
#include <sys/types.h>

#include "iotd.h"

/*
 * Sanitizer builds keep the children out of chroot and seccomp: ASan and
 * LeakSanitizer read /proc, re-open the binary to symbolise reports and
 * clone a tracer thread, none of which a confined process may do. The
 * user is still dropped.
 */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PRIVSEP_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
	__has_feature(undefined_behavior_sanitizer)
#define PRIVSEP_SANITIZED 1
#endif
#endif
#ifndef PRIVSEP_SANITIZED
#define PRIVSEP_SANITIZED 0
#endif

struct privsep {
	bool active;          /* started as root: every child drops to uid/gid */
	bool confine;         /* listener and workers also chroot and load seccomp */
	uid_t uid;
	gid_t gid;
	char user[64];        /* the name the children run as (after any fallback) */
	int root_fd;          /* O_PATH fd of an empty, already removed directory; -1 */
};

/*
 * In the supervisor, before the first fork. Not root: nothing to do
 * (ps->active false). Root: resolves `user` (falling back to "nobody",
 * logged) and prepares the empty root. Returns 0, or -1 (logged).
 */
int privsep_prepare(struct privsep *ps, const char *user);

/*
 * In a freshly forked child, once it has closed what its role must not
 * hold: chroot (listener, workers), leave root for good, re-arm the
 * parent-death signal (a credential change clears it), then load the
 * seccomp filter (listener, workers). Returns 0, or -1 (logged): the
 * child must then exit, never serve with privileges it should not have.
 */
int privsep_enter(const struct privsep *ps, enum iotd_role role, pid_t parent);

/* In the supervisor at exit. */
void privsep_release(struct privsep *ps);

#endif
