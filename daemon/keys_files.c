/*
 * keys_files.c - the key role's files and its one use of the private
 * keys: for each certificate (tls { }'s and the named ones), its key_file
 * read and checked against its cert_file, the chain and the clients' CAs
 * and CRLs (ca_file, ca_path, crl_file) written out again as PEM for the
 * workers, a signing context per algorithm and digest the key signs with,
 * and the signature of one request. Nothing here but the key
 * role ever reads a key_file.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "iotd.h"
#include "keys.h"
#include "keys_int.h"
#include "log.h"

#define CA_PATH_FILES_MAX 1024       /* files of tls.ca_path read at most */

/*
 * Messages name a file by the key that gives it: where is "tls." for
 * tls { }'s own, "tls.certificate \"name\"." for a named certificate's.
 */
#define WHERE_MAX (sizeof("tls.certificate \"\".") + TLS_NAME_MAX)

/* OpenSSL's last error, for a message. */
static const char *ssl_why(void)
{
	unsigned long e = ERR_get_error();
	static char buf[256];

	ERR_clear_error();
	if (e == 0)
		return "no PEM data of that kind";
	ERR_error_string_n(e, buf, sizeof(buf));
	return buf;
}

/*
 * A key the workers can stand in for: RSA of 2048 bits or more, P-256,
 * P-384. Ed25519 the key role could sign with, but a worker has no
 * method to stand in for it (worker_tls.c): refused at the start rather
 * than every handshake failing.
 */
static const char *key_kind_refused(EVP_PKEY *key)
{
	char group[32];

	if (EVP_PKEY_is_a(key, "RSA"))
		return EVP_PKEY_get_bits(key) < 2048 ? "an RSA key under 2048 bits" :
		       EVP_PKEY_get_size(key) > IPC_KEYS_SIG_MAX ? "an RSA key over 8192 bits" : NULL;
	if (EVP_PKEY_is_a(key, "ED25519"))
		return "an Ed25519 key, which iotd cannot serve yet: use RSA (2048 bits or more) "
		       "or EC (P-256, P-384)";
	if (EVP_PKEY_is_a(key, "EC")) {
		if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group,
						   sizeof(group), NULL) &&
		    (strcmp(group, "prime256v1") == 0 || strcmp(group, "secp384r1") == 0))
			return NULL;
		return "an EC key on a curve other than P-256 or P-384";
	}
	return "a key of a kind other than RSA or EC";
}

static int load_key(const char *where, const char *path, EVP_PKEY **key, char *err,
		    size_t errlen)
{
	FILE *fp = fopen(path, "re");
	const char *refused;

	if (fp == NULL) {
		snprintf(err, errlen, "%skey_file %s: %s", where, path, strerror(errno));
		return -1;
	}
	*key = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
	fclose(fp);
	if (*key == NULL) {
		snprintf(err, errlen, "%skey_file %s: not a PEM private key: %s", where, path,
			 ssl_why());
		return -1;
	}
	if ((refused = key_kind_refused(*key)) != NULL) {
		snprintf(err, errlen, "%skey_file %s: %s", where, path, refused);
		EVP_PKEY_free(*key);
		*key = NULL;
		return -1;
	}
	return 0;
}

/* The PEM of a memory BIO, malloc'd. */
static int bio_take(BIO *b, char **out, size_t *len)
{
	char *p;
	long n = BIO_get_mem_data(b, &p);

	*out = NULL;
	*len = 0;
	if (n <= 0)
		return 0;
	if ((*out = malloc((size_t)n)) == NULL)
		return -1;
	memcpy(*out, p, (size_t)n);
	*len = (size_t)n;
	return 0;
}

/*
 * The certificate (first) and its chain, each written again from what
 * was parsed; the first must match the key.
 */
static int load_chain(const char *where, const char *path, EVP_PKEY *key, struct keys_files *f,
		      char *err, size_t errlen)
{
	FILE *fp = fopen(path, "re");
	BIO *out = BIO_new(BIO_s_mem());
	X509 *x;
	int n = 0, rc = -1;

	if (fp == NULL || out == NULL) {
		snprintf(err, errlen, "%scert_file %s: %s", where, path,
			 fp == NULL ? strerror(errno) : "out of memory");
		goto done;
	}
	while ((x = PEM_read_X509(fp, NULL, NULL, NULL)) != NULL) {
		if (n == 0 && X509_check_private_key(x, key) != 1) {
			snprintf(err, errlen, "the key in %skey_file does not match the "
				 "certificate in %scert_file %s", where, where, path);
			X509_free(x);
			goto done;
		}
		PEM_write_bio_X509(out, x);
		X509_free(x);
		n++;
	}
	ERR_clear_error();               /* the end of the file reads as an error */
	if (n == 0) {
		snprintf(err, errlen, "%scert_file %s: no PEM certificate", where, path);
		goto done;
	}
	if (bio_take(out, &f->chain, &f->chain_len) < 0) {
		snprintf(err, errlen, "out of memory");
		goto done;
	}
	rc = 0;
done:
	if (fp != NULL)
		fclose(fp);
	BIO_free(out);
	return rc;
}

/* Every certificate and CRL of one PEM file, written to out; how many, or -1. */
static int append_pem(const char *path, BIO *out, bool certs, bool crls)
{
	FILE *fp = fopen(path, "re");
	STACK_OF(X509_INFO) *infos;
	int n = 0;

	if (fp == NULL)
		return -1;
	infos = PEM_X509_INFO_read(fp, NULL, NULL, NULL);
	fclose(fp);
	if (infos == NULL)
		return -1;
	for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
		X509_INFO *xi = sk_X509_INFO_value(infos, i);

		if (certs && xi->x509 != NULL && PEM_write_bio_X509(out, xi->x509))
			n++;
		if (crls && xi->crl != NULL && PEM_write_bio_X509_CRL(out, xi->crl))
			n++;
	}
	sk_X509_INFO_pop_free(infos, X509_INFO_free);
	ERR_clear_error();
	return n;
}

/* tls.ca_path: each regular file that holds certificates (c_rehash's links among them). */
static int append_ca_path(const char *where, const char *dir, BIO *out, char *err,
			  size_t errlen)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	unsigned files = 0;

	if (d == NULL) {
		snprintf(err, errlen, "%sca_path %s: %s", where, dir, strerror(errno));
		return -1;
	}
	while ((e = readdir(d)) != NULL && files < CA_PATH_FILES_MAX) {
		char path[PATH_MAX];

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		files++;
		append_pem(path, out, true, false);
	}
	closedir(d);
	return 0;
}

static int load_trust(const char *where, const struct tls_cert_files *cfg, struct keys_files *f,
		      char *err, size_t errlen)
{
	BIO *out = BIO_new(BIO_s_mem());
	int rc = -1;

	if (out == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (cfg->ca_file[0] && append_pem(cfg->ca_file, out, true, false) <= 0) {
		snprintf(err, errlen, "%sca_file %s: no PEM certificate could be read", where,
			 cfg->ca_file);
		goto done;
	}
	if (cfg->ca_path[0] && append_ca_path(where, cfg->ca_path, out, err, errlen) < 0)
		goto done;
	if (cfg->crl_file[0] && append_pem(cfg->crl_file, out, false, true) <= 0) {
		snprintf(err, errlen, "%scrl_file %s: no PEM CRL could be read", where,
			 cfg->crl_file);
		goto done;
	}
	if (bio_take(out, &f->trust, &f->trust_len) < 0) {
		snprintf(err, errlen, "out of memory");
		goto done;
	}
	rc = 0;
done:
	BIO_free(out);
	return rc;
}

static int sign_ctxs_make(struct keys_files *f);

/* One certificate's files, under key_id. */
static int keys_files_load(const struct tls_cert_files *tc, uint32_t key_id, struct keys_files *f,
			   char *err, size_t errlen)
{
	char where[WHERE_MAX];

	if (tc->name[0])
		snprintf(where, sizeof(where), "tls.certificate \"%s\".", tc->name);
	else
		snprintf(where, sizeof(where), "tls.");
	*f = (struct keys_files){ .key_id = key_id };
	if (load_key(where, tc->key_file, &f->key, err, errlen) < 0 ||
	    load_chain(where, tc->cert_file, f->key, f, err, errlen) < 0 ||
	    load_trust(where, tc, f, err, errlen) < 0)
		goto fail;
	if (sign_ctxs_make(f) < 0) {
		snprintf(err, errlen, "%skey_file %s: cannot set up signing: %s", where,
			 tc->key_file, ssl_why());
		goto fail;
	}
	if (f->chain_len + f->trust_len > IPC_KEYS_CHAIN_MAX) {
		snprintf(err, errlen, "%scert_file %s: the certificate chain and the clients' CAs "
			 "take %zu bytes, more than %zu", where, tc->cert_file,
			 f->chain_len + f->trust_len, (size_t)IPC_KEYS_CHAIN_MAX);
		goto fail;
	}
	return 0;
fail:
	keys_files_free(f);
	return -1;
}

int keys_files_load_all(const struct iotd_config *cfg, uint32_t *key_id, struct keys_files *f,
			char *err, size_t errlen)
{
	for (int i = 0; i < TLS_CERTS_MAX; i++)
		f[i] = (struct keys_files){ 0 };
	for (int i = 0; i < config_tls_certs(cfg); i++) {
		struct tls_cert_files tc;

		config_tls_cert(cfg, i, &tc);
		if (tc.cert_file[0] == '\0')
			continue;            /* tls { } without a certificate: named ones only */
		if (keys_files_load(&tc, *key_id + 1, &f[i], err, errlen) < 0) {
			keys_files_free_all(f);
			return -1;
		}
		(*key_id)++;
	}
	return 0;
}

int keys_files_check(const struct iotd_config *cfg, char *err, size_t errlen)
{
	struct keys_files f[TLS_CERTS_MAX];
	uint32_t key_id = 0;

	if (!config_tls(cfg))
		return 0;
	if (keys_files_load_all(cfg, &key_id, f, err, errlen) < 0)
		return -1;
	keys_files_free_all(f);
	return 0;
}

void keys_files_free(struct keys_files *f)
{
	for (size_t a = 0; a < ARRAY_SIZE(f->sign_ctx); a++)
		for (size_t m = 0; m < ARRAY_SIZE(f->sign_ctx[a]); m++)
			EVP_PKEY_CTX_free(f->sign_ctx[a][m]);
	EVP_PKEY_free(f->key);
	free(f->chain);
	free(f->trust);
	*f = (struct keys_files){ 0 };
}

void keys_files_free_all(struct keys_files *f)
{
	for (int i = 0; i < TLS_CERTS_MAX; i++)
		keys_files_free(&f[i]);
}

static const EVP_MD *md_of(uint8_t md)
{
	switch (md) {
	case IPC_KEYS_MD_SHA256: return EVP_sha256();
	case IPC_KEYS_MD_SHA384: return EVP_sha384();
	case IPC_KEYS_MD_SHA512: return EVP_sha512();
	default: return NULL;
	}
}

/* Does the request's algorithm go with the key in force? */
static bool alg_fits(EVP_PKEY *key, uint8_t alg)
{
	switch (alg) {
	case IPC_KEYS_RSA_PKCS1:
	case IPC_KEYS_RSA_PSS: return EVP_PKEY_is_a(key, "RSA");
	case IPC_KEYS_ECDSA: return EVP_PKEY_is_a(key, "EC");
	case IPC_KEYS_ED25519: return EVP_PKEY_is_a(key, "ED25519");
	default: return false;
	}
}

/* Ed25519 signs the data itself, in one go. */
static int sign_ed25519(EVP_PKEY *key, const struct ipc_keys_fields *req, uint8_t *sig,
			size_t *sig_len)
{
	EVP_MD_CTX *m = EVP_MD_CTX_new();
	int ok = m != NULL && EVP_DigestSignInit(m, NULL, NULL, NULL, key) == 1 &&
		 EVP_DigestSign(m, sig, sig_len, req->data, req->len) == 1;

	EVP_MD_CTX_free(m);
	return ok ? 0 : -1;
}

/* A context to sign with: PKCS#1 v1.5 and ECDSA over md's digest, RSA-PSS's encoding as it is. */
static EVP_PKEY_CTX *sign_ctx_new(EVP_PKEY *key, uint8_t alg, uint8_t md)
{
	EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
	int ok = c != NULL && EVP_PKEY_sign_init(c) == 1;

	if (ok && alg == IPC_KEYS_RSA_PSS)
		ok = EVP_PKEY_CTX_set_rsa_padding(c, RSA_NO_PADDING) == 1;
	else if (ok)
		ok = EVP_PKEY_CTX_set_signature_md(c, md_of(md)) == 1 &&
		     (alg != IPC_KEYS_RSA_PKCS1 ||
		      EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) == 1);
	if (!ok) {
		EVP_PKEY_CTX_free(c);
		return NULL;
	}
	return c;
}

/* Every context the key signs a digest with (none for Ed25519, which signs the data). */
static int sign_ctxs_make(struct keys_files *f)
{
	for (uint8_t alg = IPC_KEYS_RSA_PKCS1; alg <= IPC_KEYS_ECDSA; alg++) {
		if (!alg_fits(f->key, alg))
			continue;
		for (uint8_t md = IPC_KEYS_MD_NONE; md < IPC_KEYS_MD_MAX; md++) {
			if ((md == IPC_KEYS_MD_NONE) != (alg == IPC_KEYS_RSA_PSS))
				continue;
			if ((f->sign_ctx[alg][md] = sign_ctx_new(f->key, alg, md)) == NULL)
				return -1;
		}
	}
	return 0;
}

/* PKCS#1 v1.5 and ECDSA sign a digest; a checked PSS encoding is signed as it is. */
static int sign_digest(const struct keys_files *f, const struct ipc_keys_fields *req, uint8_t *sig,
		       size_t *sig_len)
{
	uint8_t md = req->alg == IPC_KEYS_RSA_PSS ? IPC_KEYS_MD_NONE : req->md;
	EVP_PKEY_CTX *c = req->alg <= IPC_KEYS_ECDSA && md < IPC_KEYS_MD_MAX ?
			  f->sign_ctx[req->alg][md] : NULL;

	return c != NULL && EVP_PKEY_sign(c, sig, sig_len, req->data, req->len) == 1 ? 0 : -1;
}

/* db ^= MGF1(seed) (RFC 8017, B.2.1). */
static bool mgf1_xor(uint8_t *db, size_t dblen, const uint8_t *seed, size_t hlen,
		     const EVP_MD *md)
{
	uint8_t mask[EVP_MAX_MD_SIZE], ctr[4];
	size_t done = 0;

	for (uint32_t i = 0; done < dblen; i++) {
		ctr[0] = (uint8_t)(i >> 24);
		ctr[1] = (uint8_t)(i >> 16);
		ctr[2] = (uint8_t)(i >> 8);
		ctr[3] = (uint8_t)i;
		EVP_MD_CTX *m = EVP_MD_CTX_new();
		bool ok = m != NULL && EVP_DigestInit_ex(m, md, NULL) == 1 &&
			  EVP_DigestUpdate(m, seed, hlen) == 1 && EVP_DigestUpdate(m, ctr, 4) == 1 &&
			  EVP_DigestFinal_ex(m, mask, NULL) == 1;

		EVP_MD_CTX_free(m);
		if (!ok)
			return false;
		for (size_t j = 0; j < hlen && done < dblen; j++)
			db[done++] ^= mask[j];
	}
	return true;
}

/*
 * Is em, of the key's size, an EMSA-PSS encoding (RFC 8017, 9.1.1) with
 * MGF1 of md and a salt of md's length: masked zeros, a one and the salt,
 * the hash, 0xbc? Only its digest is not checked (it is hashed into H).
 */
static bool pss_encoded_with(EVP_PKEY *key, const uint8_t *em, size_t len, const EVP_MD *md)
{
	size_t hlen = (size_t)EVP_MD_get_size(md), embits = (size_t)EVP_PKEY_get_bits(key) - 1;
	size_t emlen = (embits + 7) / 8, dblen, top = 8 * emlen - embits;
	uint8_t db[IPC_KEYS_SIG_MAX];

	if (len != (size_t)EVP_PKEY_get_size(key) || len - emlen > 1 || (len > emlen && em[0]))
		return false;
	em += len - emlen;
	if (emlen < 2 * hlen + 2 || em[emlen - 1] != 0xbc || (em[0] & (uint8_t)(0xff << (8 - top))))
		return false;
	dblen = emlen - hlen - 1;
	memcpy(db, em, dblen);
	if (!mgf1_xor(db, dblen, em + dblen, hlen, md))
		return false;
	db[0] &= (uint8_t)(0xff >> top);
	for (size_t i = 0; i < dblen - hlen - 1; i++)
		if (db[i] != 0)
			return false;
	return db[dblen - hlen - 1] == 0x01;
}

/* The digests TLS uses with PSS. */
static bool pss_encoded(EVP_PKEY *key, const uint8_t *em, size_t len)
{
	return pss_encoded_with(key, em, len, EVP_sha256()) ||
	       pss_encoded_with(key, em, len, EVP_sha384()) ||
	       pss_encoded_with(key, em, len, EVP_sha512());
}

uint32_t keys_sign(const struct keys_files *f, const struct ipc_keys_fields *req, uint8_t *sig,
		   size_t *sig_len)
{
	int rc;

	if (f->key == NULL || req->key_id != f->key_id)
		return IPC_KEYS_WRONG_KEY;
	if (!alg_fits(f->key, req->alg) ||
	    (req->alg == IPC_KEYS_RSA_PSS && !pss_encoded(f->key, req->data, req->len)))
		return IPC_KEYS_WRONG_ALG;
	*sig_len = IPC_KEYS_SIG_MAX;
	rc = req->alg == IPC_KEYS_ED25519 ? sign_ed25519(f->key, req, sig, sig_len) :
					    sign_digest(f, req, sig, sig_len);
	if (rc < 0) {
		log_warn("cannot sign: %s", ssl_why());
		*sig_len = 0;
		return IPC_KEYS_SIGN_FAILED;
	}
	return IPC_KEYS_OK;
}
