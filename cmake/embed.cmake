# Writes OUT: a C file holding every file under ROOT that GLOB matches as a string, in the
# array TABLE of struct embedded_file (engine/common/embedded.h). The build runs it once per
# embedded tree:
#
#   cmake -DROOT=DIR -DOUT=FILE.c -DGLOB=PATTERN -DTABLE=NAME -DPREFIX=SHOWN/
#         [-DLUA_MODULES=ON] [-DEXCLUDE=REGEX] -P embed.cmake
#
# EXCLUDE leaves out the paths under ROOT that it matches.
#
# An entry's name is its path under ROOT ("status.html"), or with LUA_MODULES its Lua module
# name ("sluice/dsl.lua" is "sluice.dsl"); its path is PREFIX followed by its path under ROOT.
# An .html file must hold exactly one inline "<script>" element: its entry carries the
# Content-Security-Policy source of that script's SHA-256 ("'sha256-...'").
foreach(v ROOT OUT GLOB TABLE PREFIX)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "embed.cmake: -D${v}= is required")
  endif()
endforeach()

# The base64 (RFC 4648, padded) of the bytes written as hex digits in `hex`.
function(hex_to_base64 hex out)
  set(abc "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
  string(LENGTH "${hex}" n)
  set(b64 "")
  set(i 0)
  while(i LESS n)
    string(SUBSTRING "${hex}" ${i} 6 group) # up to 3 bytes
    string(LENGTH "${group}" glen)
    math(EXPR bytes "${glen} / 2")
    math(EXPR pad "3 - ${bytes}")
    string(REPEAT "00" ${pad} zeros)
    math(EXPR v "0x${group}${zeros}")
    foreach(shift 18 12 6 0)
      math(EXPR c "(${v} >> ${shift}) & 63")
      string(SUBSTRING "${abc}" ${c} 1 ch)
      string(APPEND b64 "${ch}")
    endforeach()
    if(pad GREATER 0)
      math(EXPR keep "4 - ${pad}")
      string(LENGTH "${b64}" blen)
      math(EXPR cut "${blen} - 4 + ${keep}")
      string(SUBSTRING "${b64}" 0 ${cut} b64)
      string(REPEAT "=" ${pad} eq)
      string(APPEND b64 "${eq}")
    endif()
    math(EXPR i "${i} + 6")
  endwhile()
  set(${out} "${b64}" PARENT_SCOPE)
endfunction()

# The CSP source of the one inline <script> element of the HTML file `path`.
function(script_hash path out)
  file(READ ${path} text)
  string(FIND "${text}" "<script>" open)
  string(FIND "${text}" "<script>" last REVERSE)
  string(FIND "${text}" "</script>" close)
  if(open EQUAL -1 OR close EQUAL -1 OR NOT open EQUAL last)
    message(FATAL_ERROR "embed.cmake: ${path} must hold exactly one <script> element")
  endif()
  math(EXPR start "${open} + 8")
  math(EXPR len "${close} - ${start}")
  string(SUBSTRING "${text}" ${start} ${len} script)
  string(SHA256 digest "${script}")
  hex_to_base64(${digest} b64)
  set(${out} "'sha256-${b64}'" PARENT_SCOPE)
endfunction()

file(GLOB_RECURSE files RELATIVE ${ROOT} ${ROOT}/${GLOB})
if(DEFINED EXCLUDE)
  list(FILTER files EXCLUDE REGEX "${EXCLUDE}")
endif()
list(SORT files)
set(body "/* ${TABLE}.c - generated from ${PREFIX} by cmake/embed.cmake; do not edit */\n")
string(APPEND body "#include <stddef.h>\n#include \"embedded.h\"\n\n")
set(table "const struct embedded_file ${TABLE}[] = {\n")
set(i 0)
foreach(f ${files})
  file(READ ${ROOT}/${f} hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
  set(name "${f}")
  if(LUA_MODULES)
    string(REGEX REPLACE "\\.lua$" "" name "${name}")
    string(REPLACE "/" "." name "${name}")
  endif()
  set(hash "NULL")
  if(f MATCHES "\\.html$")
    script_hash(${ROOT}/${f} h)
    set(hash "\"${h}\"")
  endif()
  string(APPEND body "static const char f${i}[] = {${hex} 0};\n")
  string(APPEND table "    {\"${name}\", \"${PREFIX}${f}\", f${i}, sizeof(f${i}) - 1, ${hash}},\n")
  math(EXPR i "${i} + 1")
endforeach()
string(APPEND table "    {NULL, NULL, NULL, 0, NULL},\n};\n")
file(WRITE ${OUT}.tmp "${body}\n${table}")
file(COPY_FILE ${OUT}.tmp ${OUT} ONLY_IF_DIFFERENT)
