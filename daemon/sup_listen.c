/*
 * sup_listen.c - the supervisor's listening sockets.
 *
 * Owns env.listen_fds and listen_owner: sockets systemd passed (socket
 * activation, by FileDescriptorName=), or bound here from
 * server.listen_addresses, bound at start but made to listen only once the
 * router is ready (start_serving), and on reload a new set prepared
 * beside the running one (an address that stays keeps its socket) and
 * committed only when the whole reload succeeds. The listener inherits
 * them; a restarted one finds them where its predecessor did.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "log.h"
#include "supervisor_int.h"

/* What log lines put before an address of this transport: nothing for plain MQTT. */
static const char *scheme_prefix(int transport)
{
	switch (transport) {
	case LISTEN_TCP: return "";
	case LISTEN_MQTTS: return "mqtts://";
	case LISTEN_WS: return "ws://";
	case LISTEN_WSS: return "wss://";
	default: return "?://";
	}
}

/* "127.0.0.1:1883", "[::1]:1883", "ws://0.0.0.0:8080/mqtt": a configured address, for log lines. */
static void format_listen_addr(const struct listen_addr *la, char *out, size_t len)
{
	bool v6 = la->family == AF_INET6;

	snprintf(out, len, "%s%s%s%s:%s%s", scheme_prefix(la->transport), v6 ? "[" : "",
		 la->host[0] ? la->host : "*", v6 ? "]" : "", la->port, la->path);
}

bool listen_addr_equal(const struct listen_addr *a, const struct listen_addr *b)
{
	return strcmp(a->host, b->host) == 0 && strcmp(a->port, b->port) == 0 &&
	       a->family == b->family;
}

/*
 * listen_now false: bound only, so that the address is ours (a clash is a
 * start-up error) while connections are still refused; start_serving()
 * makes it listen once the router is ready.
 */
static int bind_one(const struct addrinfo *ai, bool v6only, bool listen_now)
{
	int fd, one = 1, v6 = v6only ? 1 : 0;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ai->ai_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof(v6));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || (listen_now && listen(fd, SOMAXCONN) < 0)) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/*
 * Bind one configured address, appending its sockets to set (owner: its
 * index). An empty host means every address: both families, IPv6 with
 * V6ONLY so the IPv4 socket can share the port. "[::]:port" alone is dual
 * stack (V6ONLY off) unless it fails because an IPv4 wildcard already
 * holds the port. Returns 0, or -1 with the reason in err; the sockets it
 * appended stay in set for the caller to close.
 */
static int bind_listen_addr(struct listen_set *set, const struct listen_addr *la, int owner,
			    bool listen_now, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *res, *ai;
	const char *host = la->host[0] && strcmp(la->host, "*") ? la->host : NULL;
	char where[192];
	int rc, fd, bound = 0;

	format_listen_addr(la, where, sizeof(where));
	hints.ai_family = la->family;
	rc = getaddrinfo(host, la->port, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "cannot resolve listen address %s: %s", where,
			 gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		if (set->n >= (int)ARRAY_SIZE(set->fd))
			break;
		fd = bind_one(ai, host == NULL, listen_now);
		if (fd < 0 && ai->ai_family == AF_INET6 && errno == EADDRINUSE)
			fd = bind_one(ai, true, listen_now);
		if (fd < 0) {
			int saved = errno;

			/* After a drop of privileges (User= in the unit), say why rather than just EACCES. */
			snprintf(err, errlen, "cannot listen on %s: %s%s", where, strerror(saved),
				 saved == EACCES && atoi(la->port) < 1024 && geteuid() != 0 ?
				 " (a port below 1024 needs root or CAP_NET_BIND_SERVICE, which the "
				 "supervisor does not have)" : "");
			freeaddrinfo(res);
			return -1;
		}
		set->fd[set->n] = fd;
		set->owner[set->n] = owner;
		set->kept[set->n] = false;
		set->n++;
		bound++;
	}
	freeaddrinfo(res);
	if (bound == 0) {
		snprintf(err, errlen, "cannot listen on %s: no usable address", where);
		return -1;
	}
	return 0;
}

/* Close the sockets of set that were bound for it (a reload that failed). */
static void listen_set_abandon(struct listen_set *set)
{
	for (int i = 0; i < set->n; i++)
		if (!set->kept[i])
			close(set->fd[i]);
	set->n = 0;
}

/*
 * Make set the sockets the listener serves, each with the transport of
 * the address of cfg it was bound for (an address kept over a reload
 * takes the new one's).
 */
static void listen_set_install(struct supervisor *sv, const struct iotd_config *cfg,
			       const struct listen_set *set)
{
	for (int i = 0; i < set->n; i++) {
		const struct listen_addr *la = &cfg->listen[set->owner[i]];

		sv->env.listen_fds[i] = set->fd[i];
		sv->listen_owner[i] = set->owner[i];
		sv->env.listen_kinds[i].transport = la->transport;
		memcpy(sv->env.listen_kinds[i].path, la->path, sizeof(la->path));
		sv->env.listen_kinds[i].tls = la->tls;
	}
	sv->env.n_listen_fds = set->n;
}

/* "0.0.0.0:1883", "[::]:1883", "/run/x.sock": for log lines about a socket. */
static void format_sockname(int fd, char *out, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t slen = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";

	snprintf(out, len, "?");
	if (getsockname(fd, (struct sockaddr *)&ss, &slen) < 0)
		return;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(out, len, "%s:%u", host, ntohs(sin->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(out, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else if (ss.ss_family == AF_UNIX) {
		const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;

		snprintf(out, len, "%s", slen > offsetof(struct sockaddr_un, sun_path) &&
			 sun->sun_path[0] ? sun->sun_path : "(unnamed)");
	}
}

/*
 * What a passed socket carries, from its FileDescriptorName=: "mqtt",
 * "websocket" (or "mqtt-ws"), "mqtts", "websocket-tls". A socket unit
 * without the option passes its own unit name ("iotd.socket"), and a
 * launcher that names nothing passes "unknown": both mean plain MQTT.
 * Returns an enum listen_transport, or -1 for a name we do not know.
 */
static int transport_of(const char *name)
{
	size_t len = strlen(name);

	if (strcmp(name, "mqtt") == 0 || strcmp(name, "unknown") == 0 ||
	    (len > 7 && strcmp(name + len - 7, ".socket") == 0))
		return LISTEN_TCP;
	if (strcmp(name, "websocket") == 0 || strcmp(name, "mqtt-ws") == 0)
		return LISTEN_WS;
	if (strcmp(name, "mqtts") == 0)
		return LISTEN_MQTTS;
	if (strcmp(name, "websocket-tls") == 0)
		return LISTEN_WSS;
	return -1;
}

/* One passed socket: a listening stream socket for a transport we serve, made non-blocking. */
static int take_passed_socket(struct supervisor *sv, int fd, const char *name)
{
	char where[128];
	int flags, transport = transport_of(name);

	format_sockname(fd, where, sizeof(where));
	if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
		log_error("socket '%s' (fd %d, %s) passed by systemd is not a listening stream "
			  "socket", name, fd, where);
		return -1;
	}
	if (transport < 0) {
		log_error("socket '%s' (fd %d, %s): unknown FileDescriptorName= (expected "
			  "\"mqtt\", \"websocket\", \"mqtts\" or \"websocket-tls\")", name, fd,
			  where);
		return -1;
	}
	/* A passed socket presents tls { }'s certificate: the unit names none. */
	if (listen_transport_tls(transport) && sv->cfg->tls_cert_file[0] == '\0') {
		log_error("socket '%s' (fd %d, %s) is for %s, which needs tls.cert_file and "
			  "tls.key_file", name, fd, where, listen_transport_name(transport));
		return -1;
	}
	if (listen_transport_tls(transport) && sv->cfg->tls_use_identity_as_username &&
	    !sv->cfg->tls_require_certificate) {
		log_error("socket '%s' (fd %d, %s) is for %s, which presents tls { }'s "
			  "certificate: tls.use_identity_as_username needs "
			  "tls.require_certificate = true there", name, fd, where,
			  listen_transport_name(transport));
		return -1;
	}
	if (sv->env.n_listen_fds >= (int)ARRAY_SIZE(sv->env.listen_fds)) {
		log_error("too many sockets passed by systemd (at most %zu)",
			  ARRAY_SIZE(sv->env.listen_fds));
		return -1;
	}
	/* The listener accepts until EAGAIN: a blocking socket would stall it. */
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
		log_error("socket '%s' (fd %d): cannot make it non-blocking: %s", name, fd,
			  strerror(errno));
		return -1;
	}
	/* A passed WebSocket socket serves any path: the unit has no place for one. */
	memset(&sv->env.listen_kinds[sv->env.n_listen_fds], 0, sizeof(sv->env.listen_kinds[0]));
	sv->env.listen_kinds[sv->env.n_listen_fds].transport = transport;
	sv->env.listen_fds[sv->env.n_listen_fds++] = fd;
	log_info("listening on %s%s (socket '%s' passed by systemd)", scheme_prefix(transport),
		 where, name);
	return 0;
}

/* Sockets from systemd (socket activation): 0 when none were passed. */
static int take_passed_sockets(struct supervisor *sv)
{
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names), rc = 0;

	if (n < 0) {
		log_error("cannot read the sockets passed by systemd: %s", strerror(-n));
		return -1;
	}
	for (int i = 0; i < n && rc == 0; i++)
		rc = take_passed_socket(sv, SD_LISTEN_FDS_START + i,
					names && names[i] ? names[i] : "unknown");
	if (names) {
		for (int i = 0; i < n; i++)
			free(names[i]);
		free(names);
	}
	if (rc < 0)
		return -1;
	sv->socket_activated = n > 0;
	return n;
}

int open_listeners(struct supervisor *sv)
{
	struct listen_set set = { .n = 0 };
	char err[CONFIG_ERR_LEN], where[96];
	int n = take_passed_sockets(sv);

	for (int i = 0; i < sv->env.n_listen_fds; i++)
		sv->listen_owner[i] = -1;
	if (n != 0)
		return n < 0 ? -1 : 0;
	for (int i = 0; i < sv->cfg->n_listen; i++)
		if (bind_listen_addr(&set, &sv->cfg->listen[i], i, false, err, sizeof(err)) < 0) {
			log_error("%s", err);
			listen_set_abandon(&set);
			return -1;
		}
	listen_set_install(sv, sv->cfg, &set);
	for (int i = 0; i < sv->cfg->n_listen; i++) {
		format_listen_addr(&sv->cfg->listen[i], where, sizeof(where));
		log_debug("bound %s (to listen once the router is ready)", where);
	}
	return 0;
}

/*
 * The sockets for the addresses of `next` (a reload): an address the
 * running configuration has keeps its sockets, so accepting on it never
 * stops; a new one is bound here, by the supervisor, which is still root
 * when iotd was started as root. Returns 0, or -1 with the reason in err,
 * having closed what it bound: the running sockets are untouched.
 */
int listen_prepare(struct supervisor *sv, const struct iotd_config *next,
		   struct listen_set *set, char *err, size_t errlen)
{
	char where[192];

	set->n = 0;
	for (int i = 0; i < next->n_listen; i++) {
		const struct listen_addr *la = &next->listen[i];
		int old = -1;

		for (int j = 0; j < i; j++)
			if (listen_addr_equal(&next->listen[j], la)) {
				format_listen_addr(la, where, sizeof(where));
				snprintf(err, errlen, "server.listen_addresses: %s is listed twice", where);
				goto fail;
			}
		for (int j = 0; j < sv->cfg->n_listen && old < 0; j++)
			if (listen_addr_equal(&sv->cfg->listen[j], la))
				old = j;
		if (old < 0) {
			if (bind_listen_addr(set, la, i, sv->serving, err, errlen) < 0)
				goto fail;
			continue;
		}
		for (int k = 0; k < sv->env.n_listen_fds; k++)
			if (sv->listen_owner[k] == old && set->n < (int)ARRAY_SIZE(set->fd)) {
				set->fd[set->n] = sv->env.listen_fds[k];
				set->owner[set->n] = i;
				set->kept[set->n] = true;
				set->n++;
			}
	}
	return 0;
fail:
	listen_set_abandon(set);
	return -1;
}

/*
 * Serve `set` (from listen_prepare) from now on: the sockets of addresses
 * no longer configured are closed here; the old listener keeps its copies
 * until it exits, and its successor inherits exactly `set`.
 */
void listen_commit(struct supervisor *sv, const struct iotd_config *next,
		   const struct listen_set *set)
{
	char where[192];

	for (int k = 0; k < sv->env.n_listen_fds; k++) {
		bool kept = false;

		for (int i = 0; i < set->n && !kept; i++)
			kept = set->kept[i] && set->fd[i] == sv->env.listen_fds[k];
		if (kept)
			continue;
		format_sockname(sv->env.listen_fds[k], where, sizeof(where));
		log_info("no longer listening on %s", where);
		close(sv->env.listen_fds[k]);
	}
	listen_set_install(sv, next, set);
	for (int i = 0; i < next->n_listen; i++) {
		bool bound = false;

		for (int k = 0; k < set->n; k++)
			bound |= set->owner[k] == i && !set->kept[k];
		format_listen_addr(&next->listen[i], where, sizeof(where));
		if (bound)
			log_info("listening on %s", where);
	}
}

/*
 * The router is ready for the first time: only now do our sockets listen
 * (until then a client is refused, not left waiting for a CONNACK) and
 * the listener start. systemd's sockets listen from the start: their
 * connections wait in the backlog.
 */
void start_serving(struct supervisor *sv)
{
	struct child *listener = &sv->children[sv->n_children - 1];   /* setup_children() */
	char where[128];

	for (int i = 0; i < sv->env.n_listen_fds; i++) {
		if (sv->listen_owner[i] < 0)
			continue;
		int transport = sv->env.listen_kinds[i].transport;

		format_sockname(sv->env.listen_fds[i], where, sizeof(where));
		if (listen(sv->env.listen_fds[i], SOMAXCONN) < 0) {
			log_error("cannot listen on %s: %s", where, strerror(errno));
			stop_failed_start(sv);
			return;
		}
		log_info("listening on %s%s%s", scheme_prefix(transport), where,
			 sv->env.listen_kinds[i].path);
	}
	sv->serving = true;
	if (child_spawn(sv, listener) < 0)
		child_schedule_restart(sv, listener);
}
