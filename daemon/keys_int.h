/*
 * keys_int.h - what the key role's files share: the files in force, one
 * set per certificate (the private key, the certificate chain and the
 * clients' CAs as the workers get them), and one signature. Private to daemon/keys*.c.
 */
#ifndef IOTD_KEYS_INT_H
#define IOTD_KEYS_INT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "config.h"
#include "ipc.h"

struct keys_files {
	EVP_PKEY *key;               /* the server's private key: held by this role alone; NULL:
	                              * no such certificate (tls { } without cert_file) */
	uint32_t key_id;             /* the workers' name for it (IPC_KEYS_CHAIN) */
	char *chain;                 /* PEM of the certificate and its chain, as parsed */
	size_t chain_len;
	char *trust;                 /* PEM of the clients' CAs and CRLs; NULL: none */
	size_t trust_len;
	/*
	 * A signing context per algorithm and digest the key signs a digest
	 * with (RSA-PSS under IPC_KEYS_MD_NONE), set up once at load: a
	 * signature then costs no fetch and no set-up. NULL: not this key's.
	 */
	EVP_PKEY_CTX *sign_ctx[IPC_KEYS_ECDSA + 1][IPC_KEYS_MD_MAX];
};

/*
 * Read every certificate's files (config_tls_cert): its key_file,
 * cert_file and clients' CAs and CRLs, and check that each key is of a
 * kind the workers can use (RSA of 2048 bits or more, EC P-256 or P-384,
 * Ed25519) and matches its certificate. All or nothing: 0 with
 * f[0 .. TLS_CERTS_MAX - 1] set (key NULL where no certificate is), each
 * key under the next of *key_id, or -1 with why in err (naming the
 * certificate and the file); nothing is kept then.
 */
int keys_files_load_all(const struct iotd_config *cfg, uint32_t *key_id, struct keys_files *f,
			char *err, size_t errlen);
void keys_files_free(struct keys_files *f);
void keys_files_free_all(struct keys_files *f);

/*
 * Sign one decoded request with the key f holds: sig gets up to
 * IPC_KEYS_SIG_MAX bytes. An IPC_KEYS_* status.
 */
uint32_t keys_sign(const struct keys_files *f, const struct ipc_keys_fields *req, uint8_t *sig,
		   size_t *sig_len);

#endif
