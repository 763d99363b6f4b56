// Fixture certificates and their expected values.

#include "fixture.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include <openssl/pem.h>

namespace fixture {

namespace {

std::string read_file(const std::string &path)
{
    std::ifstream in(path, std::ios::binary);

    if (!in) {
        throw std::runtime_error("cannot read " + path);
    }

    return std::string(std::istreambuf_iterator<char>(in),
                       std::istreambuf_iterator<char>());
}


mtls::ossl::bio open_file(const std::string &path)
{
    mtls::ossl::bio bio(BIO_new_file(path.c_str(), "r"));

    if (!bio) {
        throw std::runtime_error("cannot open " + path);
    }

    return bio;
}

}  // namespace


std::string expected::one(const std::string &field) const
{
    auto it = fields.find(field);
    return it == fields.end() ? std::string() : it->second;
}


std::vector<std::string> expected::all(const std::string &field) const
{
    std::vector<std::string> out;
    auto range = fields.equal_range(field);

    for (auto it = range.first; it != range.second; ++it) {
        out.push_back(it->second);
    }

    return out;
}


std::string dir()
{
    return MTLS_FIXTURE_DIR;
}


std::vector<std::string> names()
{
    std::vector<std::string> out;

    for (const auto &entry : std::filesystem::directory_iterator(dir())) {
        if (entry.path().extension() == ".expect") {
            out.push_back(entry.path().stem().string());
        }
    }

    std::sort(out.begin(), out.end());
    return out;
}


mtls::ossl::x509 certificate(const std::string &name)
{
    std::string path = dir() + "/" + name + ".crt";
    mtls::ossl::bio bio = open_file(path);
    mtls::ossl::x509 cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr,
                                            nullptr));

    if (!cert) {
        throw std::runtime_error("no certificate in " + path);
    }

    return cert;
}


expected expectations(const std::string &name)
{
    std::string text = read_file(dir() + "/" + name + ".expect");
    expected out;
    std::size_t pos = 0;

    while (pos < text.size()) {
        std::size_t end = text.find('\n', pos);
        if (end == std::string::npos) {
            end = text.size();
        }

        std::string line = text.substr(pos, end - pos);
        std::size_t eq = line.find('=');

        if (eq != std::string::npos) {
            out.fields.emplace(line.substr(0, eq), line.substr(eq + 1));
        }

        pos = end + 1;
    }

    return out;
}


std::string der(const std::string &name)
{
    mtls::ossl::x509 cert = certificate(name);
    unsigned char *buf = nullptr;
    int len = i2d_X509(cert.get(), &buf);

    if (len <= 0) {
        throw std::runtime_error("cannot encode " + name);
    }

    std::string out(reinterpret_cast<char *>(buf),
                    static_cast<std::size_t>(len));
    OPENSSL_free(buf);
    return out;
}


mtls::ossl::pkey ca_key()
{
    std::string path = dir() + "/ca-a.key";
    mtls::ossl::bio bio = open_file(path);
    mtls::ossl::pkey key(PEM_read_bio_PrivateKey(bio.get(), nullptr,
                                                 nullptr, nullptr));

    if (!key) {
        throw std::runtime_error("no key in " + path);
    }

    return key;
}

}  // namespace fixture
