/*
 * privsep.h - how iotd's processes give up what their role does not need,
 * whoever starts it.
 *
 * The supervisor binds its sockets, maps its shared memory and, when it
 * runs as root, resolves the unprivileged user first (privsep_prepare),
 * then keeps only the capabilities its remaining jobs need
 * (privsep_limit_supervisor) and forks. Each child, before it runs its
 * role (privsep_enter), leaves root for that user when there is root to
 * leave, drops every capability and sets no_new_privs; the listener and
 * the workers, which need no file at all, are also shut in an empty
 * directory (as root only) and under Landlock with no file allowed, and
 * every child is under a seccomp allow-list of its role. The router is
 * shut under Landlock in its store directory once that is open
 * (privsep_seal_store). docs/arch.md ("Privileges") lists what each role
 * keeps.
 */
#ifndef IOTD_PRIVSEP_H
#define IOTD_PRIVSEP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "iotd.h"

/*
 * Sanitizer builds keep the children out of chroot, Landlock and seccomp:
 * ASan and LeakSanitizer read /proc, re-open the binary to symbolise
 * reports and clone a tracer thread, none of which a confined process may
 * do. The user and the capabilities are still dropped. A daemon run under
 * valgrind is left unconfined the same way, detected at run time (valgrind
 * makes system calls of its own in the process, executable mappings
 * among them).
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
	bool confine;         /* seccomp and Landlock (and chroot, as root) */
	int landlock_abi;     /* the kernel's Landlock ABI; 0: none */
	uid_t uid;
	gid_t gid;
	char user[64];        /* the name the children run as (after any fallback) */
	int root_fd;          /* O_PATH fd of an empty, already removed directory; -1 */
};

/*
 * In the supervisor, before the first fork. Decides the confinement
 * (none in a sanitizer build or under valgrind) and asks the kernel for
 * Landlock (logged once when it has none). Root only: resolves `user`
 * (falling back to "nobody", logged) and prepares the empty root.
 * Returns 0, or -1 (logged).
 */
int privsep_prepare(struct privsep *ps, const char *user);

/*
 * In the supervisor, after privsep_prepare and before the first fork:
 * keeps in its effective, permitted and bounding sets only the
 * capabilities it still uses (binding reloaded addresses, forking
 * children that drop, signalling and measuring them), clears the rest
 * and the inheritable and ambient sets. Returns 0, or -1 (logged).
 */
int privsep_limit_supervisor(const struct privsep *ps);

/*
 * In a freshly forked child, once it has closed what its role must not
 * hold: chroot (listener, workers, as root), empty the bounding set,
 * leave root for good, drop every capability, re-arm the parent-death
 * signal (a credential change clears it), set no_new_privs, Landlock with
 * no file allowed (listener, workers), then the seccomp filter of the
 * role. Returns 0, or -1 (logged): the child must then exit, never serve
 * with privileges it should not have.
 */
int privsep_enter(const struct privsep *ps, enum iotd_role role, pid_t parent);

/*
 * In the router, once its store is open: Landlock lets it reach nothing
 * but the files beneath `dir`, and, with `removable`, remove `dir` itself
 * (a memory store, removed at a graceful stop). Without Landlock, or
 * unconfined, does nothing. Returns 0, or -1 (logged).
 */
int privsep_seal_store(const char *dir, bool removable);

/*
 * In the auth role, once it has read its files: Landlock lets it read
 * files beneath the n directories (those of its files) and nothing else.
 * Without Landlock, or unconfined, does nothing. Returns 0, or -1 (logged).
 */
int privsep_seal_read(const char *const *dirs, size_t n);
/*
 * privsep_seal_read() for the directories of n files (an empty path is
 * none) and the m directories dirs: what a role that reads those files
 * again on reload may keep reading.
 */
int privsep_seal_read_files(const char *const *files, size_t n, const char *const *dirs,
			    size_t m);

/* In the supervisor at exit. */
void privsep_release(struct privsep *ps);

#endif
