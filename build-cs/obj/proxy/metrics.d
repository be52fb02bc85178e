build-cs/obj/proxy/metrics.o: proxy/metrics.c proxy/metrics.h \
 proxy/conn.h proxy/buf.h proxy/server.h conf/conf.h \
 certstore/certstore.h proxy/starttls.h
proxy/metrics.h:
proxy/conn.h:
proxy/buf.h:
proxy/server.h:
conf/conf.h:
certstore/certstore.h:
proxy/starttls.h:
