build-cs/obj/proxy/conn.o: proxy/conn.c proxy/conn.h proxy/buf.h \
 proxy/server.h conf/conf.h certstore/certstore.h proxy/starttls.h \
 proxy/log.h proxy/metrics.h proxy/tls.h
proxy/conn.h:
proxy/buf.h:
proxy/server.h:
conf/conf.h:
certstore/certstore.h:
proxy/starttls.h:
proxy/log.h:
proxy/metrics.h:
proxy/tls.h:
