build-conf/obj/conf/hostname.o: conf/hostname.c conf/internal.h \
 conf/conf.h
conf/internal.h:
conf/conf.h:
