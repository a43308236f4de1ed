/*
 * config.h - the daemon's configuration: defaults, file, environment, CLI.
 *
 * The supervisor parses it once (and again on SIGHUP) into a plain struct
 * that children inherit by fork; after a reload each child gets the struct
 * in force whole (IPC_CONFIG), so it must stay plain data, with no pointer,
 * and fit in one control message (checked in common/util.c). Precedence: command line over environment
 * (IOTD_<SECTION>_<KEY>, e.g. IOTD_SERVER_MAX_CONNECTIONS) over the file
 * over built-in defaults.
 */
#ifndef IOTD_CONFIG_H
#define IOTD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define CONFIG_MAX_LISTEN 16
#define CONFIG_ERR_LEN 512

/*
 * What a listener's connections speak above TCP. The values cross from
 * the listener to the workers (struct ipc_client), so they are fixed.
 */
enum listen_transport {
	LISTEN_TCP = 0,  /* MQTT over TCP: tcp://, or no scheme */
	LISTEN_MQTTS,    /* MQTT over TLS: mqtts:// (needs TLS) */
	LISTEN_WS,       /* MQTT over WebSocket: ws:// */
	LISTEN_WSS,      /* MQTT over WebSocket over TLS: wss:// (needs TLS) */
	LISTEN_N_TRANSPORTS
};

#define LISTEN_PATH_MAX 64   /* a ws:// or wss:// path with its NUL */
#define TLS_NAME_MAX 32      /* a named certificate's name with its NUL */
#define CONFIG_MAX_TLS_NAMED 8

/*
 * The certificates a TLS listener may present: 0 is tls { }'s own
 * (tls.cert_file), i > 0 is tls.certificate "name" { } number i - 1. The
 * index crosses from the listener to the workers (struct ipc_client),
 * which bound-check it.
 */
#define TLS_CERTS_MAX (1 + CONFIG_MAX_TLS_NAMED)

struct listen_addr {
	char host[64];   /* numeric or name; "" or "*" means any */
	char port[8];
	int family;      /* AF_INET, AF_INET6 or AF_UNSPEC (host resolves) */
	int transport;   /* enum listen_transport */
	char path[LISTEN_PATH_MAX]; /* ws, wss: the one path served ("/mqtt"); "": any */
	char tls_name[TLS_NAME_MAX]; /* mqtts, wss: "?tls=name"; "": tls { }'s certificate */
	int tls;         /* its index (TLS_CERTS_MAX), set by config_load from tls_name */
};

/* tls { certificate "name" { } }: a certificate a listener names (?tls=name). */
struct tls_named {
	char name[TLS_NAME_MAX];
	char cert_file[256];
	char key_file[256];
	char ca_file[256];           /* its own clients' CAs; "": none */
	bool require_certificate;
	int line;                    /* where the file declares it, for messages */
};

struct iotd_config {
	/* server { } */
	struct listen_addr listen[CONFIG_MAX_LISTEN];
	int n_listen;
	int workers;                 /* 0 = number of CPUs */
	long max_connections;
	long max_sessions;           /* online and offline, in the router; 0 = no cap */
	long max_subscriptions_per_session; /* filters one session holds; 0 = no cap */
	long max_connections_per_address; /* held at once from one address (IPv4, IPv6 /64); 0 = no cap */
	long max_connect_rate_per_address; /* new connections a second from one address; 0 = no cap */
	long placement_slack;        /* the previous connection's worker may hold this many more */
	long session_timeout_secs;   /* persistent sessions expire after this absence; 0 = never */
	long max_session_expiry_interval; /* seconds an MQTT 5 session expiry may ask; 0 = no cap */
	long keep_alive_timeout_secs;/* keep-alive applied to clients that ask for none (0) */
	long max_keepalive;          /* a client asking for more is refused; 0 = no cap */
	long connect_timeout;        /* seconds from accept to CONNECT */
	long max_packet_size;        /* bytes, whole packet */
	long max_connect_size;       /* bytes, whole CONNECT; min(this, max_packet_size) applies */
	long max_http_request_size;  /* bytes: a WebSocket upgrade request, request line and headers */
	long max_client_id_length;   /* bytes; a longer one gets CONNACK 2 */
	long retained_message_limit; /* number of retained topics */
	long retained_bytes_limit;   /* topic + payload bytes of all retained messages; 0 = no cap */
	long memory_limit;           /* whole daemon (PSS, KiB granularity), bytes; 0 = no ceiling */
	long max_inflight;           /* QoS 1/2 messages in flight per session */
	long topic_alias_maximum;    /* MQTT 5 topic aliases a client may set per connection; 0 = none */
	long topic_alias_maximum_out; /* MQTT 5 topic aliases iotd sets per connection (at most the client's); 0 = none */
	long topic_alias_max_bytes;  /* topic bytes a connection's aliases hold, each direction */
	long max_queued_messages;    /* per session, beyond the in-flight window */
	long max_queued_bytes;       /* per session; 0 = no byte cap */
	long max_queued_bytes_total; /* the router's session queues together; 0 = no cap */
	long max_inflight_bytes;     /* QoS 1/2 bytes a connection holds in flight and queued behind the window */
	long max_output_bytes;       /* unsent output past which QoS 0 is dropped and the client not read */
	long max_router_backlog_bytes; /* router's records held per worker ring; <= 0: no cap (tests) */
	bool queue_qos0_messages;    /* offline persistent sessions queue QoS 0 too (dropped first) */
	char shared_subscription_policy[16]; /* "round_robin" or "hash_publisher" */
	long max_topic_levels;
	long max_topic_length;
	char user[64];               /* children drop to this user when started as root */
	/* auth { } (see docs/iotd.conf.5; the auth role reads the files) */
	bool auth_enabled;           /* obsolete: says what auth_backend says (config.c) */
	char auth_backend[32];       /* "none", "file" or "jwt" */
	char auth_password_file[256];/* "" = none */
	char auth_acl_file[256];     /* "" = none */
	char auth_jwt_key_file[256]; /* "" = none */
	char auth_jwt_username_claim[64];
	char auth_jwt_read_claim[64];  /* "" = no read list */
	char auth_jwt_write_claim[64]; /* "" = no write list */
	bool auth_allow_anonymous;   /* clients without a user name; without a backend, any address */
	long auth_jwt_leeway;        /* seconds of clock skew allowed on exp and nbf */
	long auth_hash_threads;      /* threads of the auth role that verify passwords */
	long auth_max_pending;       /* CONNECTs one worker holds waiting for a verdict */
	long auth_max_failure_delay_ms; /* longest slow-down of an address that keeps failing; 0 = none */
	long auth_max_waiting_per_address; /* CONNECTs of a failing address waiting behind its one in flight */
	/* tls { } (see docs/iotd.conf.5; only the key role reads key_file) */
	char tls_cert_file[256];     /* the server's certificate chain, PEM; "" = no TLS */
	char tls_key_file[256];      /* its private key, PEM (RSA, EC P-256/P-384) */
	char tls_ca_file[256];       /* CAs that sign clients' certificates */
	char tls_ca_path[256];       /* a directory of them (c_rehash) */
	char tls_crl_file[256];      /* revoked client certificates */
	bool tls_require_certificate;    /* a client without a valid certificate is refused */
	bool tls_use_identity_as_username; /* the certificate's CN (else first SAN) is the user name */
	char tls_min_version[16];    /* "tlsv1.2" or "tlsv1.3" */
	char tls_ciphers[256];       /* TLS 1.2 cipher list; "" = OpenSSL's default */
	char tls_ciphersuites[256];  /* TLS 1.3 suites; "" = OpenSSL's default */
	char tls_groups[128];        /* key exchange groups; "" = OpenSSL's default */
	long tls_handshake_timeout;  /* seconds from accept to a finished handshake */
	long tls_max_pending_signs;  /* signatures one worker may have waiting in the key role */
	struct tls_named tls_named[CONFIG_MAX_TLS_NAMED]; /* tls { certificate "name" { } } */
	int n_tls_named;
	/* storage { } */
	char storage_backend[16];    /* "memory" or "disk" */
	char storage_path[256];
	/* logging { } */
	int log_level;               /* enum log_level */
	int log_format;              /* enum log_format */
	/* where it came from, for messages */
	char path[256];
};

struct cli_args {
	const char *config_path;     /* NULL: the default path, missing file is fine */
	bool config_explicit;        /* -c given: a missing file is an error */
	const char *listen[CONFIG_MAX_LISTEN];
	int n_listen;
	int workers;                 /* -1 when not given */
	bool test_only;              /* -t */
	bool help, version;
	int verbose;                 /* -v count: raises log level */
	/* internal: set by main when re-executing a role; unused for now */
};

/* Fill in built-in defaults. */
void config_defaults(struct iotd_config *cfg);

/*
 * Parse argv. Returns 0, or -1 with a message in err ("unknown option
 * '--x'", ...). Does not touch cfg.
 */
int config_parse_args(int argc, char **argv, struct cli_args *args,
		      char *err, size_t errlen);

/*
 * Build the full configuration: defaults, then the file (args->config_path
 * or the default path), then the environment, then the command line.
 * Returns 0, or -1 with a message in err naming the file, line and key
 * ("/etc/iotd/iotd.conf:12: server: max_connections: invalid value 'x'").
 */
int config_load(struct iotd_config *cfg, const struct cli_args *args,
		char *const *envp, char *err, size_t errlen);

/*
 * Whether the auth role runs: a backend checks credentials, or an ACL file
 * is to be held. Without it, each worker serves loopback clients only
 * unless auth.allow_anonymous.
 */
bool config_auth_role(const struct iotd_config *cfg);
/*
 * Are clients' rights limited: an ACL file, or a JWT backend with a read
 * or write list claim (a token's lists)? The workers then check writes
 * before a local delivery.
 */
bool config_acl_in_force(const struct iotd_config *cfg);

/*
 * Whether TLS is configured (tls { }'s certificate and key, or a named
 * one): the key role runs.
 */
bool config_tls(const struct iotd_config *cfg);
/* How many certificates the key role holds slots for: 1 + the named ones. */
int config_tls_certs(const struct iotd_config *cfg);

/*
 * Certificate i's files (TLS_CERTS_MAX): 0 is tls { }'s, i > 0 a named
 * one's. cert_file "" for an unset slot 0.
 */
struct tls_cert_files {
	const char *name;            /* "" for tls { }'s */
	const char *cert_file, *key_file, *ca_file, *ca_path, *crl_file;
	bool require_certificate;
};
void config_tls_cert(const struct iotd_config *cfg, int i, struct tls_cert_files *out);

/*
 * Parse one listen address: "host:port", "[v6]:port", "tcp://host:port",
 * ":port", "mqtts://host:port", "ws://host:port[/path]",
 * "wss://host:port[/path]"; mqtts and wss may end in "?tls=name".
 */
int config_parse_listen(const char *s, struct listen_addr *out);

/* "tcp", "mqtts", "ws", "wss": a transport's scheme, for messages. */
const char *listen_transport_name(int transport);

/* Does this transport need TLS (mqtts, wss)? */
bool listen_transport_tls(int transport);

void config_usage(FILE *out, const char *prog);

#endif
