#include "tls/cert_expiry.h"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <ctime>
#include <memory>

namespace rpcgate::tls {

namespace {

std::string subject_of(X509* cert) {
    X509_NAME* name = X509_get_subject_name(cert);
    char buf[256];
    if (X509_NAME_get_text_by_NID(name, NID_commonName, buf, sizeof buf) > 0) return buf;
    char* line = X509_NAME_oneline(name, nullptr, 0);
    std::string out = line ? line : "";
    OPENSSL_free(line);
    return out;
}

std::string serial_of(X509* cert) {
    std::unique_ptr<BIGNUM, decltype(&BN_free)> bn(
        ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr), BN_free);
    if (!bn) return "";
    char* hex = BN_bn2hex(bn.get());
    std::string out = hex ? hex : "";
    OPENSSL_free(hex);
    return out;
}

}  // namespace

std::vector<cert_expiry> read_cert_expiries(const std::string& path, std::string* err) {
    std::vector<cert_expiry> out;
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(path.c_str(), "r"), BIO_free);
    if (!bio) {
        *err = path + ": cannot be read";
        return out;
    }
    while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
        std::tm tm{};
        cert_expiry e;
        if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1) e.not_after = timegm(&tm);
        e.subject = subject_of(cert);
        e.serial = serial_of(cert);
        out.push_back(std::move(e));
        X509_free(cert);
    }
    if (out.empty()) *err = path + ": no certificate in it";
    return out;
}

}  // namespace rpcgate::tls
