# Make rules for ngx_http_mtls_identity_module, appended to objs/Makefile
# by nginx's auto/make (see config).  Every source is C++ and is compiled
# with the C++ compiler, nginx's CFLAGS (so a packager's --with-cc-opt
# applies, and nginx's -Werror), position-independent code and C++17.
# CXX, when set at configure time, names the compiler; the project's own
# Makefile sets MTLS_IDENTITY_CXXFLAGS to its stricter warning set.

mtls_identity_cxx=${CXX:-c++}

mkdir -p "$mtls_identity_objs"

cat << END                                                >> $NGX_MAKEFILE

MTLS_IDENTITY_CXX = $mtls_identity_cxx
MTLS_IDENTITY_CXXFLAGS = -std=c++17 -Wall -Wextra

$NGX_OBJS/$ngx_addon_name$ngx_modext:$mtls_identity_link

END

for mtls_identity_src in $mtls_identity_srcs; do
    mtls_identity_obj=`basename "$mtls_identity_src" | sed 's/\.[^.]*$//'`
    mtls_identity_obj=$mtls_identity_objs/$mtls_identity_obj.o

    cat << END                                            >> $NGX_MAKEFILE
$mtls_identity_obj:	\$(ADDON_DEPS) $mtls_identity_src
	\$(MTLS_IDENTITY_CXX) $ngx_compile_opt $ngx_pic_opt \$(CFLAGS) \\
	    \$(MTLS_IDENTITY_CXXFLAGS) \$(ALL_INCS) \\
	    $ngx_objout$mtls_identity_obj $mtls_identity_src

END
done
