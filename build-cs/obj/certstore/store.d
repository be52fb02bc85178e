build-cs/obj/certstore/store.o: certstore/store.c certstore/internal.h \
 certstore/certstore.h conf/conf.h
certstore/internal.h:
certstore/certstore.h:
conf/conf.h:
